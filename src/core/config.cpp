#include "core/config.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

namespace scaffold {
namespace {

constexpr const char* kUserFacing = "External/user-facing";
constexpr const char* kProblem = "External problem specification";
constexpr const char* kLearningRate = "External learning rate specification";
constexpr const char* kInternal = "Internal/dev use only";

constexpr const char* kOverridesOrigin = "the command-line overrides";

using Field = std::variant<int Config::*, std::int64_t Config::*, double Config::*, bool Config::*,
                           std::string Config::*, std::vector<int> Config::*>;

struct KeySpec {
  const char* name;
  const char* group;  // section heading in configs/benchmark_default.yml and in to_yaml
  Field field;
};

// Every settable key, in the order of configs/benchmark_default.yml.
const std::vector<KeySpec>& key_specs() {
  static const std::vector<KeySpec> specs = {
      {"base_run_dir", kUserFacing, &Config::base_run_dir},
      {"dataset_dir", kUserFacing, &Config::dataset_dir},
      {"fract_base_dir", kUserFacing, &Config::fract_base_dir},
      {"seed", kUserFacing, &Config::seed},
      {"dataloader_num_workers", kUserFacing, &Config::dataloader_num_workers},
      {"dc_num_shards", kUserFacing, &Config::dc_num_shards},
      {"dc_shard_dims", kUserFacing, &Config::dc_shard_dims},
      {"checkpoint_interval", kUserFacing, &Config::checkpoint_interval},
      {"job_name", kUserFacing, &Config::job_name},
      {"async_save", kUserFacing, &Config::async_save},
      {"conv_backend", kUserFacing, &Config::conv_backend},
      {"ddp_bucket_cap_mb", kUserFacing, &Config::ddp_bucket_cap_mb},
      {"mlperf_log", kUserFacing, &Config::mlperf_log},

      {"n_categories", kProblem, &Config::n_categories},
      {"n_instances_used_per_fractal", kProblem, &Config::n_instances_used_per_fractal},
      {"problem_scale", kProblem, &Config::problem_scale},
      {"unet_bottleneck_dim", kProblem, &Config::unet_bottleneck_dim},
      {"target_dice", kProblem, &Config::target_dice},

      {"local_batch_size", kLearningRate, &Config::local_batch_size},
      {"optimizer", kLearningRate, &Config::optimizer},
      {"starting_learning_rate", kLearningRate, &Config::starting_learning_rate},
      {"min_learning_rate", kLearningRate, &Config::min_learning_rate},
      {"T_0", kLearningRate, &Config::T_0},
      {"T_mult", kLearningRate, &Config::T_mult},
      {"disable_scheduler", kLearningRate, &Config::disable_scheduler},

      {"variance_threshold", kInternal, &Config::variance_threshold},
      {"n_fracts_per_vol", kInternal, &Config::n_fracts_per_vol},
      {"val_split", kInternal, &Config::val_split},
      {"epochs", kInternal, &Config::epochs},
      {"more_determinism", kInternal, &Config::more_determinism},
      {"datagen_from_scratch", kInternal, &Config::datagen_from_scratch},
      {"train_from_scratch", kInternal, &Config::train_from_scratch},
      {"torch_amp", kInternal, &Config::torch_amp},
      {"framework", kInternal, &Config::framework},
      {"checkpoint_dir", kInternal, &Config::checkpoint_dir},
      {"loss_freq", kInternal, &Config::loss_freq},
      {"normalize", kInternal, &Config::normalize},
      {"group_norm_groups", kInternal, &Config::group_norm_groups},
      {"warmup_batches", kInternal, &Config::warmup_batches},
      {"activation_checkpointing", kInternal, &Config::activation_checkpointing},
      {"ce_weight_sample_fraction", kInternal, &Config::ce_weight_sample_fraction},
      {"dataset_reuse_enforce_commit_id", kInternal, &Config::dataset_reuse_enforce_commit_id},
  };
  return specs;
}

const KeySpec* find_spec(const std::string& name) {
  for (const KeySpec& spec : key_specs()) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

bool is_list_field(const KeySpec& spec) {
  return std::holds_alternative<std::vector<int> Config::*>(spec.field);
}

// Key names of older reference versions and the keys that replaced them.
// num_shards and shard_dim were scalars (one sharded axis); they become one-element lists.
struct RenamedKey {
  const char* old_name;
  const char* new_name;
};
constexpr RenamedKey kRenamedKeys[] = {
    {"batch_size", "local_batch_size"},
    {"learning_rate", "starting_learning_rate"},
    {"num_shards", "dc_num_shards"},
    {"shard_dim", "dc_shard_dims"},
};

const RenamedKey* find_renamed(const std::string& name) {
  for (const RenamedKey& renamed : kRenamedKeys) {
    if (name == renamed.old_name) return &renamed;
  }
  return nullptr;
}

// Keys the reference writes into a run directory's config.yaml: command-line
// arguments and launcher metadata. They carry no setting, so they are skipped
// and such a file loads back.
const std::set<std::string>& ignored_keys() {
  static const std::set<std::string> keys = {
      "command", "config", "verbose", "restart", "run_dir", "run_iter", "benchmark_run_dir",
      "scheduler_metadata", "machine_name", "datagen_batch_size", "dc_total_shards"};
  return keys;
}

// Keys with their own rule: derived values that must agree with the settings,
// and older switches that no longer change anything.
constexpr const char* kDerivedKeys[] = {"vol_size", "unet_layers", "point_num"};

bool is_derived_key(const std::string& name) {
  return std::find(std::begin(kDerivedKeys), std::end(kDerivedKeys), name) != std::end(kDerivedKeys);
}

bool is_special_key(const std::string& name) {
  return name == "scale" || name == "dist" || name == "warmup_epochs" || is_derived_key(name);
}

std::size_t levenshtein_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> previous(b.size() + 1);
  std::vector<std::size_t> current(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) previous[j] = j;

  for (std::size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

// Returns "did you mean 'key'?" for the valid key nearest in edit distance, or a
// pointer to the list of keys when even the nearest one shares little with `name`.
std::string key_suggestion(const std::string& name) {
  std::string best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const KeySpec& spec : key_specs()) {
    const std::size_t distance = levenshtein_distance(name, spec.name);
    if (distance < best_distance) {
      best_distance = distance;
      best = spec.name;
    }
  }

  if (best_distance > std::max<std::size_t>(3, name.size() / 2)) {
    return "no valid key is close; configs/benchmark_default.yml lists them all";
  }
  return fmt::format("did you mean '{}'?", best);
}

std::string unknown_key_message(const std::vector<std::string>& names, const std::string& origin) {
  if (names.size() == 1) {
    return fmt::format("unknown key '{}' in {}; {}", names[0], origin, key_suggestion(names[0]));
  }
  std::vector<std::string> parts;
  for (const std::string& name : names) {
    parts.push_back(fmt::format("'{}' ({})", name, key_suggestion(name)));
  }
  return fmt::format("unknown keys in {}: {}", origin, fmt::join(parts, ", "));
}

std::string to_lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// The value as it appears in the file, for messages.
std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsNull()) return "";
  YAML::Emitter emitter;
  emitter << YAML::Flow << node;
  return emitter.c_str();
}

[[noreturn]] void throw_wrong_type(const std::string& key, const YAML::Node& node, const std::string& origin,
                                   const std::string& expected) {
  throw ConfigError(
      fmt::format("invalid value '{}' for '{}' in {}: expected {}", describe(node), key, origin, expected));
}

// Returns the text of a plain scalar that must hold a number or boolean. A quoted
// value is a string in YAML, so `seed: "42"` is rejected rather than converted.
std::string plain_scalar_text(const std::string& key, const YAML::Node& node, const std::string& origin,
                              const std::string& expected) {
  if (node.IsNull()) {
    throw ConfigError(fmt::format("'{}' in {} has no value; give {} or delete the line", key, origin, expected));
  }
  if (!node.IsScalar()) throw_wrong_type(key, node, origin, expected);
  if (node.Tag() == "!") {
    throw ConfigError(fmt::format("invalid value \"{}\" for '{}' in {}: expected {}, not a quoted string; "
                                  "remove the quotes",
                                  node.Scalar(), key, origin, expected));
  }

  std::string text = node.Scalar();
  if (!text.empty() && text[0] == '+') text.erase(0, 1);
  return text;
}

template <typename Number>
bool parse_whole(const std::string& text, Number& value) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  return ec == std::errc() && ptr == end;
}

std::int64_t parse_int64(const std::string& key, const YAML::Node& node, const std::string& origin,
                         std::int64_t min = std::numeric_limits<std::int64_t>::min(),
                         std::int64_t max = std::numeric_limits<std::int64_t>::max()) {
  const std::string text = plain_scalar_text(key, node, origin, "an integer");
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc::result_out_of_range || (ec == std::errc() && ptr == end && (value < min || value > max))) {
    throw_wrong_type(key, node, origin, fmt::format("an integer in [{}, {}]", min, max));
  }
  if (ec != std::errc() || ptr != end) throw_wrong_type(key, node, origin, "an integer");
  return value;
}

int parse_int(const std::string& key, const YAML::Node& node, const std::string& origin) {
  return static_cast<int>(
      parse_int64(key, node, origin, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
}

double parse_double(const std::string& key, const YAML::Node& node, const std::string& origin) {
  const std::string text = plain_scalar_text(key, node, origin, "a number");
  double value = 0;
  if (!parse_whole(text, value) || !std::isfinite(value)) throw_wrong_type(key, node, origin, "a finite number");
  return value;
}

bool parse_bool(const std::string& key, const YAML::Node& node, const std::string& origin) {
  const std::string expected = "a boolean (true, false, 1 or 0)";
  const std::string text = to_lower(plain_scalar_text(key, node, origin, expected));
  if (text == "true" || text == "1") return true;
  if (text == "false" || text == "0") return false;
  throw_wrong_type(key, node, origin, expected);
}

// problem_scale alone accepts a fractional value, rounded down as the reference does.
int parse_problem_scale(const YAML::Node& node, const std::string& origin) {
  const std::string text = plain_scalar_text("problem_scale", node, origin, "an integer");
  std::int64_t whole = 0;
  if (parse_whole(text, whole)) return parse_int("problem_scale", node, origin);

  const double value = parse_double("problem_scale", node, origin);
  const double floored = std::floor(value);
  if (floored < std::numeric_limits<int>::min() || floored > std::numeric_limits<int>::max()) {
    throw_wrong_type("problem_scale", node, origin, "an integer");
  }
  if (floored != value) {
    spdlog::warn("problem_scale = {} in {} is not an integer; using {}", text, origin, floored);
  }
  return static_cast<int>(floored);
}

std::string parse_string(const std::string& key, const YAML::Node& node, const std::string& origin) {
  if (node.IsNull()) {
    throw ConfigError(fmt::format("'{}' in {} has no value; give a string or delete the line", key, origin));
  }
  if (!node.IsScalar()) throw_wrong_type(key, node, origin, "a string");
  return node.Scalar();
}

std::vector<int> parse_int_list(const std::string& key, const YAML::Node& node, const std::string& origin) {
  const std::string expected = "a list of integers such as [1, 1, 1]";
  if (node.IsNull()) {
    throw ConfigError(fmt::format("'{}' in {} has no value; give {} or delete the line", key, origin, expected));
  }
  if (!node.IsSequence()) throw_wrong_type(key, node, origin, expected);

  std::vector<int> values;
  for (const YAML::Node& element : node) {
    if (!element.IsScalar()) throw_wrong_type(key, node, origin, expected);
    values.push_back(parse_int(key, element, origin));
  }
  return values;
}

void set_field(Config& config, const KeySpec& spec, const YAML::Node& node, const std::string& origin) {
  const std::string key = spec.name;
  std::visit(
      [&](auto member) {
        using Value = std::remove_reference_t<decltype(config.*member)>;
        if constexpr (std::is_same_v<Value, int>) {
          config.*member = key == "problem_scale" ? parse_problem_scale(node, origin) : parse_int(key, node, origin);
        } else if constexpr (std::is_same_v<Value, std::int64_t>) {
          config.*member = parse_int64(key, node, origin);
        } else if constexpr (std::is_same_v<Value, double>) {
          config.*member = parse_double(key, node, origin);
        } else if constexpr (std::is_same_v<Value, bool>) {
          config.*member = parse_bool(key, node, origin);
        } else if constexpr (std::is_same_v<Value, std::string>) {
          config.*member = parse_string(key, node, origin);
        } else {
          config.*member = parse_int_list(key, node, origin);
        }
      },
      spec.field);
}

// Key -> the file or "the command-line overrides" that last set it, for messages.
using Origins = std::map<std::string, std::string>;

// Checks a derived key of a saved config (vol_size, unet_layers, point_num)
// against the settings merged so far.
void check_derived_key(const Config& config, const std::string& key, const YAML::Node& node,
                       const std::string& origin) {
  const std::int64_t value_in_file = parse_int64(key, node, origin);

  // Out-of-range scales fail validation later with a clearer message.
  if (config.problem_scale < 0 || config.problem_scale > 20) return;
  const std::int64_t vol_size = std::int64_t{1} << config.problem_scale;

  std::int64_t expected = 0;
  std::string settings = fmt::format("problem_scale = {}", config.problem_scale);
  std::string rule;
  if (key == "vol_size") {
    expected = vol_size;
    rule = fmt::format("2^problem_scale = 2^{}", config.problem_scale);
  } else if (key == "unet_layers") {
    expected = config.problem_scale - config.unet_bottleneck_dim;
    settings += fmt::format(" and unet_bottleneck_dim = {}", config.unet_bottleneck_dim);
    rule = fmt::format("problem_scale - unet_bottleneck_dim = {} - {}", config.problem_scale,
                       config.unet_bottleneck_dim);
  } else {
    expected = vol_size * vol_size * vol_size / 256;
    rule = fmt::format("vol_size^3 / 256 = {}^3 / 256", vol_size);
  }

  if (value_in_file != expected) {
    throw ConfigError(fmt::format("{} = {} in {} does not match {}, which give {} = {}; delete {} (it is derived) "
                                  "or correct the settings",
                                  key, value_in_file, origin, settings, rule, expected, key));
  }
}

// Applies a key of an older reference version under its current name. The older
// scalar num_shards and shard_dim described one sharded axis.
void set_renamed_field(Config& config, const RenamedKey& renamed, const YAML::Node& node,
                       const std::string& origin) {
  spdlog::warn("'{}' in {} is an older key name; reading it as '{}' (rename it to silence this warning)",
               renamed.old_name, origin, renamed.new_name);

  const KeySpec& spec = *find_spec(renamed.new_name);
  if (is_list_field(spec) && node.IsScalar()) {
    YAML::Node list(YAML::NodeType::Sequence);
    list.push_back(node);
    set_field(config, spec, list, origin);
    return;
  }
  set_field(config, spec, node, origin);
}

void check_no_sweeps(const std::vector<std::pair<std::string, YAML::Node>>& entries, const std::string& origin) {
  std::vector<std::string> swept;
  for (const auto& [name, node] : entries) {
    if (!node.IsSequence()) continue;

    const KeySpec* spec = find_spec(name);
    const RenamedKey* renamed = find_renamed(name);
    const bool scalar_key = (spec != nullptr && !is_list_field(*spec)) ||
                            (renamed != nullptr && !is_list_field(*find_spec(renamed->new_name))) ||
                            is_special_key(name);
    if (scalar_key) swept.push_back("'" + name + "'");
  }

  if (!swept.empty()) {
    throw ConfigError(fmt::format(
        "{} gives a list of values for {}; parameter sweeps are not supported: give one value per key "
        "and run the benchmark once per value",
        origin, fmt::join(swept, ", ")));
  }
}

// Merges one parsed YAML document (one config file) into `config`.
void merge_document(const YAML::Node& root, const std::string& origin, Config& config, Origins& origins) {
  if (root.IsNull()) {
    throw ConfigError(fmt::format("{} is empty; a config file must contain 'key: value' lines", origin));
  }
  if (!root.IsMap()) {
    throw ConfigError(fmt::format("{} must contain a YAML mapping of 'key: value' lines at the top level, "
                                  "but it contains a {}",
                                  origin, root.IsSequence() ? "list" : "single value"));
  }

  // Collect the entries, rejecting non-string and duplicate keys.
  std::vector<std::pair<std::string, YAML::Node>> entries;
  std::set<std::string> seen;
  for (const auto& item : root) {
    if (!item.first.IsScalar()) {
      throw ConfigError(fmt::format("{} contains a key that is not a name: '{}'", origin, describe(item.first)));
    }
    const std::string name = item.first.Scalar();
    if (!seen.insert(name).second) {
      throw ConfigError(fmt::format("'{}' appears more than once in {}; keep one of the lines", name, origin));
    }
    entries.emplace_back(name, item.second);
  }

  std::vector<std::string> unknown;
  for (const auto& entry : entries) {
    const std::string& name = entry.first;
    if (find_spec(name) == nullptr && find_renamed(name) == nullptr && !ignored_keys().contains(name) &&
        !is_special_key(name)) {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty()) throw ConfigError(unknown_key_message(unknown, origin));

  check_no_sweeps(entries, origin);

  for (const RenamedKey& renamed : kRenamedKeys) {
    if (seen.contains(renamed.old_name) && seen.contains(renamed.new_name)) {
      throw ConfigError(fmt::format("{} sets both '{}' and its older name '{}'; delete the '{}' line", origin,
                                    renamed.new_name, renamed.old_name, renamed.old_name));
    }
  }

  // Apply the settings; derived keys wait until every setting of this file is in.
  std::vector<std::pair<std::string, YAML::Node>> derived;
  for (const auto& [name, node] : entries) {
    if (const KeySpec* spec = find_spec(name)) {
      set_field(config, *spec, node, origin);
      origins[name] = origin;
    } else if (const RenamedKey* renamed = find_renamed(name)) {
      set_renamed_field(config, *renamed, node, origin);
      origins[renamed->new_name] = origin;
    } else if (is_derived_key(name)) {
      derived.emplace_back(name, node);
    } else if (name == "scale") {
      const double scale = parse_double(name, node, origin);
      if (scale != 1) {
        throw ConfigError(fmt::format("scale = {} in {} is invalid: it must be 1; delete the line", describe(node),
                                      origin));
      }
    } else if (name == "dist") {
      if (!parse_bool(name, node, origin)) {
        throw ConfigError(fmt::format("dist = {} in {} is invalid: the benchmark always runs distributed "
                                      "(a single process is a world of one rank); delete the line",
                                      describe(node), origin));
      }
      spdlog::warn("'dist' in {} is ignored: the benchmark always runs distributed", origin);
    } else if (name == "warmup_epochs") {
      spdlog::warn("'warmup_epochs' in {} is ignored; set warmup_batches instead", origin);
    } else {
      spdlog::debug("'{}' in {} is run metadata and is ignored", name, origin);
    }
  }

  // An older file that names only one of the sharding pair gets the other one
  // as a one-element list too: no sharding, or sharding along the depth axis.
  if (seen.contains("num_shards") && !seen.contains("shard_dim") && !seen.contains("dc_shard_dims")) {
    config.dc_shard_dims = {2};
  }
  if (seen.contains("shard_dim") && !seen.contains("num_shards") && !seen.contains("dc_num_shards")) {
    config.dc_num_shards = {1};
  }

  for (const auto& [name, node] : derived) check_derived_key(config, name, node, origin);
}

YAML::Node parse_yaml(const std::string& text, const std::string& origin) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& error) {
    throw ConfigError(fmt::format("invalid YAML in {} at line {}, column {}: {}", origin, error.mark.line + 1,
                                  error.mark.column + 1, error.msg));
  }
}

// Turns an override's text into the node a file would give: a scalar, or for a
// list key a sequence written as "[2, 1, 1]", "2,1,1" or "2 1 1".
YAML::Node override_node(const KeySpec& spec, const std::string& key, const std::string& text) {
  if (!is_list_field(spec)) return YAML::Node(text);

  if (text.find('[') != std::string::npos) return parse_yaml(text, fmt::format("the override of '{}'", key));
  YAML::Node list(YAML::NodeType::Sequence);
  std::string item;
  std::istringstream stream(text);
  while (stream >> item) {
    std::istringstream parts(item);
    std::string part;
    while (std::getline(parts, part, ',')) {
      if (!part.empty()) list.push_back(YAML::Node(part));
    }
  }
  return list;
}

void apply_overrides(const ConfigOverrides& overrides, Config& config, Origins& origins) {
  for (const auto& [key, text] : overrides.values) {
    const KeySpec* spec = find_spec(key);
    const RenamedKey* renamed = find_renamed(key);
    if (spec == nullptr && renamed == nullptr) throw ConfigError(unknown_key_message({key}, kOverridesOrigin));
    if (text.empty()) {
      throw ConfigError(fmt::format("the override of '{}' is empty; give a value", key));
    }

    // Surrounding blanks are kept only for strings, where they may be intended.
    const KeySpec& target = spec != nullptr ? *spec : *find_spec(renamed->new_name);
    const bool is_string = std::holds_alternative<std::string Config::*>(target.field);
    const std::size_t first = text.find_first_not_of(" \t");
    const std::size_t last = text.find_last_not_of(" \t");
    const std::string value = is_string || first == std::string::npos ? text : text.substr(first, last - first + 1);
    const YAML::Node node = override_node(target, key, value);
    if (renamed != nullptr) {
      set_renamed_field(config, *renamed, node, kOverridesOrigin);
    } else {
      set_field(config, target, node, kOverridesOrigin);
    }
    origins[target.name] = kOverridesOrigin;
  }
}

// Accepts any letter case for the optimizer name and stores the reference's spelling.
void normalize_optimizer(Config& config) {
  const std::string lower = to_lower(config.optimizer);
  if (lower == "adam") config.optimizer = "ADAM";
  if (lower == "rmsprop") config.optimizer = "RMSProp";
}

// A validation failure that records which key it is about, so that load_config
// can add where the value came from.
class InvalidValueError : public ConfigError {
 public:
  InvalidValueError(std::string key, const std::string& message) : ConfigError(message), key_(std::move(key)) {}
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

template <typename... Args>
[[noreturn]] void reject(const std::string& key, fmt::format_string<Args...> format, Args&&... args) {
  throw InvalidValueError(key, fmt::format(format, std::forward<Args>(args)...));
}

std::string format_list(const std::vector<int>& values) { return fmt::format("[{}]", fmt::join(values, ", ")); }

void validate_problem(const Config& c) {
  if (c.problem_scale < 2 || c.problem_scale > 14) {
    reject("problem_scale", "problem_scale = {} is invalid: it must be in [2, 14] (vol_size = 2^problem_scale)",
           c.problem_scale);
  }
  if (c.unet_bottleneck_dim < 0 || c.unet_bottleneck_dim > c.problem_scale - 1) {
    reject("unet_bottleneck_dim",
           "unet_bottleneck_dim = {} is invalid: it must be in [0, problem_scale - 1] = [0, {}] "
           "so that the U-Net has at least one level",
           c.unet_bottleneck_dim, c.problem_scale - 1);
  }
  if (c.n_categories < 1) {
    reject("n_categories", "n_categories = {} is invalid: it must be at least 1", c.n_categories);
  }
  if (c.n_fracts_per_vol < 1) {
    reject("n_fracts_per_vol", "n_fracts_per_vol = {} is invalid: it must be at least 1", c.n_fracts_per_vol);
  }
  if (c.n_instances_used_per_fractal < c.n_fracts_per_vol) {
    reject("n_instances_used_per_fractal",
           "n_instances_used_per_fractal = {} is invalid: it must be at least n_fracts_per_vol = {} "
           "so that the dataset has at least one volume",
           c.n_instances_used_per_fractal, c.n_fracts_per_vol);
  }
  if (!(c.target_dice > 0 && c.target_dice <= 1)) {
    reject("target_dice", "target_dice = {} is invalid: it must be in (0, 1]", c.target_dice);
  }
  if (c.variance_threshold < 0) {
    reject("variance_threshold", "variance_threshold = {} is invalid: it must be at least 0", c.variance_threshold);
  }
  if (!(c.normalize > 0)) {
    reject("normalize", "normalize = {} is invalid: it must be greater than 0", c.normalize);
  }
}

void validate_split(const Config& c) {
  if (!(c.val_split >= 0 && c.val_split < 100)) {
    reject("val_split", "val_split = {} is invalid: it must be in [0, 100) (percent of volumes used for validation)",
           c.val_split);
  }

  const VolumeCounts counts = volume_counts(c);
  const std::string dataset = fmt::format(
      "{} volume{} that n_categories = {}, n_instances_used_per_fractal = {} and n_fracts_per_vol = {} make",
      counts.total, counts.total == 1 ? "" : "s", c.n_categories, c.n_instances_used_per_fractal,
      c.n_fracts_per_vol);
  if (counts.train < 1) {
    reject("val_split",
           "val_split = {} is invalid: it leaves no training volume out of the {}; lower val_split or add volumes",
           c.val_split, dataset);
  }
  if (c.val_split > 0 && counts.validation < 1) {
    reject("val_split",
           "val_split = {} is invalid: it gives no validation volume, because int({} * {} / 100) = 0 for the {}; "
           "raise val_split or add volumes (n_categories, n_instances_used_per_fractal)",
           c.val_split, counts.total, c.val_split, dataset);
  }
}

void validate_optimization(const Config& c) {
  if (c.local_batch_size < 1) {
    reject("local_batch_size", "local_batch_size = {} is invalid: it must be at least 1", c.local_batch_size);
  }
  if (c.optimizer != "ADAM" && c.optimizer != "RMSProp") {
    reject("optimizer", "optimizer = '{}' is invalid: it must be ADAM or RMSProp (in any letter case)", c.optimizer);
  }

  if (!(c.starting_learning_rate > 0)) {
    reject("starting_learning_rate", "starting_learning_rate = {} is invalid: it must be greater than 0",
           c.starting_learning_rate);
  }
  if (!(c.min_learning_rate >= 0 && c.min_learning_rate <= c.starting_learning_rate)) {
    reject("min_learning_rate",
           "min_learning_rate = {} is invalid: it must be in [0, starting_learning_rate] = [0, {}]",
           c.min_learning_rate, c.starting_learning_rate);
  }
  if (c.T_0 < 1) reject("T_0", "T_0 = {} is invalid: it must be at least 1", c.T_0);
  if (c.T_mult < 1) reject("T_mult", "T_mult = {} is invalid: it must be at least 1", c.T_mult);

  if (c.group_norm_groups < 1 || 64 % c.group_norm_groups != 0) {
    reject("group_norm_groups",
           "group_norm_groups = {} is invalid: it must divide 64, the narrowest U-Net width "
           "(every width is 64 * 2^i), so use 1, 2, 4, 8, 16, 32 or 64",
           c.group_norm_groups);
  }
  if (!(c.ce_weight_sample_fraction > 0 && c.ce_weight_sample_fraction <= 1)) {
    reject("ce_weight_sample_fraction", "ce_weight_sample_fraction = {} is invalid: it must be in (0, 1]",
           c.ce_weight_sample_fraction);
  }
}

void validate_run(const Config& c) {
  if (c.epochs != -1 && c.epochs < 1) {
    reject("epochs", "epochs = {} is invalid: it must be -1 (no limit) or at least 1", c.epochs);
  }
  if (c.checkpoint_interval != -1 && c.checkpoint_interval < 1) {
    reject("checkpoint_interval",
           "checkpoint_interval = {} is invalid: it must be -1 (no periodic checkpoints) or at least 1",
           c.checkpoint_interval);
  }
  if (c.warmup_batches < 0) {
    reject("warmup_batches", "warmup_batches = {} is invalid: it must be at least 0", c.warmup_batches);
  }
  if (c.loss_freq < 1) reject("loss_freq", "loss_freq = {} is invalid: it must be at least 1", c.loss_freq);

  if (c.job_name.empty() || c.job_name.find('/') != std::string::npos || c.job_name == "." || c.job_name == "..") {
    reject("job_name", "job_name = '{}' is invalid: it names the run directory inside base_run_dir, so it must be "
           "a non-empty file name without '/'", c.job_name);
  }
  if (c.conv_backend != "onednn" && c.conv_backend != "libtorch") {
    reject("conv_backend", "conv_backend = '{}' is invalid: it must be 'onednn' or 'libtorch'", c.conv_backend);
  }
  if (!(c.ddp_bucket_cap_mb > 0.0) || c.ddp_bucket_cap_mb > 4096.0) {
    reject("ddp_bucket_cap_mb", "ddp_bucket_cap_mb = {} is invalid: it must be in (0, 4096] MiB", c.ddp_bucket_cap_mb);
  }
  if (c.framework != "torch") {
    reject("framework", "framework = '{}' is invalid: it must be 'torch', the only supported framework",
           c.framework);
  }
  if (c.dataloader_num_workers < 0) {
    reject("dataloader_num_workers", "dataloader_num_workers = {} is invalid: it must be at least 0",
           c.dataloader_num_workers);
  }
  if (c.seed < 0) reject("seed", "seed = {} is invalid: it must be at least 0", c.seed);
}

void validate_sharding(const Config& c) {
  const std::string shards = format_list(c.dc_num_shards);
  const std::string dims = format_list(c.dc_shard_dims);
  if (c.dc_num_shards.empty() || c.dc_num_shards.size() != c.dc_shard_dims.size()) {
    reject("dc_num_shards",
           "dc_num_shards = {} and dc_shard_dims = {} are invalid: they must be non-empty lists of the same length",
           shards, dims);
  }

  std::set<int> seen_dims;
  for (const int dim : c.dc_shard_dims) {
    if (dim < 2 || dim > 4) {
      reject("dc_shard_dims",
             "dc_shard_dims = {} is invalid: every entry must be 2, 3 or 4 (the D, H and W axes of an "
             "N, C, D, H, W tensor)",
             dims);
    }
    if (!seen_dims.insert(dim).second) {
      reject("dc_shard_dims", "dc_shard_dims = {} is invalid: dimension {} appears twice", dims, dim);
    }
  }

  std::int64_t shards_per_volume = 1;
  for (const int count : c.dc_num_shards) {
    if (count < 1) {
      reject("dc_num_shards", "dc_num_shards = {} is invalid: every shard count must be at least 1", shards);
    }
    shards_per_volume *= count;
  }
  if (shards_per_volume > 1) {
    reject("dc_num_shards",
           "dc_num_shards = {} asks for spatial sharding ({} shards per volume), which is not implemented; "
           "use dc_num_shards: [1, 1, 1]",
           shards, shards_per_volume);
  }
}

// Validates the merged config; a failure names the source of the offending value.
void normalize_and_validate(Config& config, const Origins& origins) {
  normalize_optimizer(config);
  try {
    validate(config);
  } catch (const InvalidValueError& error) {
    const auto found = origins.find(error.key());
    if (found == origins.end()) throw;
    throw ConfigError(fmt::format("{} ({} set in {})", error.what(), error.key(), found->second));
  }
}

std::string yaml_double(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";

  // YAML 1.1 readers such as PyYAML read "1e-05" as a string; "1.0e-05" is a float.
  std::string text = format_threshold(value);
  const std::size_t exponent = text.find('e');
  if (exponent != std::string::npos && text.find('.') == std::string::npos) text.insert(exponent, ".0");
  return text;
}

std::string yaml_string(const std::string& value) {
  YAML::Emitter emitter;
  emitter << YAML::DoubleQuoted << value;
  return emitter.c_str();
}

std::string yaml_value(const Config& config, const KeySpec& spec) {
  return std::visit(
      [&](auto member) -> std::string {
        const auto& value = config.*member;
        using Value = std::remove_cvref_t<decltype(value)>;
        if constexpr (std::is_same_v<Value, double>) {
          return yaml_double(value);
        } else if constexpr (std::is_same_v<Value, bool>) {
          return value ? "true" : "false";
        } else if constexpr (std::is_same_v<Value, std::string>) {
          return yaml_string(value);
        } else if constexpr (std::is_same_v<Value, std::vector<int>>) {
          return format_list(value);
        } else {
          return std::to_string(value);
        }
      },
      spec.field);
}

}  // namespace

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> result;
    for (const KeySpec& spec : key_specs()) result.push_back(spec.name);
    return result;
  }();
  return names;
}

void validate(const Config& config) {
  validate_problem(config);
  validate_split(config);
  validate_optimization(config);
  validate_run(config);
  validate_sharding(config);
}

Config load_config(const std::vector<std::filesystem::path>& files, const ConfigOverrides& overrides) {
  Config config;
  Origins origins;

  for (const std::filesystem::path& file : files) {
    const std::string origin = file.string();
    if (!std::filesystem::is_regular_file(file)) {
      throw ConfigError(fmt::format("config file {} not found (or not a regular file); check the path given "
                                    "with -c/--config",
                                    origin));
    }
    std::ifstream stream(file, std::ios::binary);
    std::ostringstream text;
    text << stream.rdbuf();
    if (!stream) throw ConfigError(fmt::format("cannot read config file {}", origin));

    merge_document(parse_yaml(text.str(), origin), origin, config, origins);
  }

  apply_overrides(overrides, config, origins);
  normalize_and_validate(config, origins);
  return config;
}

Config load_config_text(const std::string& yaml_text, const std::string& origin) {
  Config config;
  Origins origins;
  merge_document(parse_yaml(yaml_text, origin), origin, config, origins);
  normalize_and_validate(config, origins);
  return config;
}

std::string to_yaml(const Config& config) {
  std::string out;
  const char* group = nullptr;
  for (const KeySpec& spec : key_specs()) {
    if (group != spec.group) {
      if (group != nullptr) out += "\n";
      group = spec.group;
      out += fmt::format("# {}\n", group);
    }
    out += fmt::format("{}: {}\n", spec.name, yaml_value(config, spec));
  }

  out += "\n# Derived from problem_scale and unet_bottleneck_dim; checked when read back\n";
  out += fmt::format("vol_size: {}\n", config.vol_size());
  out += fmt::format("unet_layers: {}\n", config.unet_layers());
  out += fmt::format("point_num: {}\n", config.point_num());
  return out;
}

VolumeCounts volume_counts(const Config& config) {
  VolumeCounts counts;
  if (config.n_fracts_per_vol < 1 || config.n_categories < 0 || config.n_instances_used_per_fractal < 0) {
    return counts;
  }

  // Instances per category are rounded down to a multiple of n_fracts_per_vol.
  const std::int64_t volumes_per_category = config.n_instances_used_per_fractal / config.n_fracts_per_vol;
  counts.total = std::int64_t{config.n_categories} * volumes_per_category;

  // Same operation order as the reference's int(V * val_split / 100).
  counts.validation = static_cast<std::int64_t>(static_cast<double>(counts.total) * config.val_split / 100.0);
  counts.train = counts.total - counts.validation;
  return counts;
}

std::string format_threshold(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";

  // Shortest round-trip digits in scientific form, e.g. "-1.5e-05".
  char buffer[64];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
  const std::string scientific(buffer, end);
  const bool negative = scientific[0] == '-';
  const std::size_t e_pos = scientific.find('e');
  std::string digits = scientific.substr(negative ? 1 : 0, e_pos - (negative ? 1 : 0));
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(scientific.substr(e_pos + 1));

  // Python's repr uses positional notation for exponents in [-4, 16).
  std::string text;
  if (exponent >= -4 && exponent < 16) {
    const int integer_digits = exponent + 1;
    if (integer_digits <= 0) {
      text = "0." + std::string(-integer_digits, '0') + digits;
    } else if (integer_digits >= static_cast<int>(digits.size())) {
      text = digits + std::string(integer_digits - digits.size(), '0') + ".0";
    } else {
      text = digits.substr(0, integer_digits) + "." + digits.substr(integer_digits);
    }
  } else {
    const std::string mantissa = digits.size() == 1 ? digits : digits.substr(0, 1) + "." + digits.substr(1);
    text = fmt::format("{}e{}{:02d}", mantissa, exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  return negative ? "-" + text : text;
}

}  // namespace scaffold
