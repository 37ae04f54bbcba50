#include "cli/show_command.hpp"

#include <algorithm>
#include <filesystem>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/config.hpp"
#include "core/logging.hpp"
#include "dataset/dataset.hpp"
#include "report/slice_images.hpp"
#include "train/checkpoint.hpp"
#include "train/final_images.hpp"
#include "train/threads.hpp"

namespace scaffold {

namespace fs = std::filesystem;

namespace {

// "0-3, 7, 9-12" for the sorted ids {0, 1, 2, 3, 7, 9, 10, 11, 12}; "none" when empty.
std::string format_id_ranges(const std::vector<int>& ids) {
  if (ids.empty()) return "none";
  std::string text;
  for (std::size_t begin = 0; begin < ids.size();) {
    std::size_t end = begin;
    while (end + 1 < ids.size() && ids[end + 1] == ids[end] + 1) ++end;
    if (!text.empty()) text += ", ";
    text += end == begin ? fmt::format("{}", ids[begin]) : fmt::format("{}-{}", ids[begin], ids[end]);
    begin = end + 1;
  }
  return text;
}

bool contains(const std::vector<int>& sorted_ids, int id) {
  return std::binary_search(sorted_ids.begin(), sorted_ids.end(), id);
}

std::string split_name(Split split) { return split == Split::kValidation ? "validation" : "training"; }

// The split that contains `id`, checked against --split when it was given.
Split resolve_split(const DatasetInfo& dataset, int id, const std::string& requested) {
  const bool in_training = contains(dataset.train_ids, id);
  const bool in_validation = contains(dataset.val_ids, id);
  const std::string available = fmt::format("training ids: {}; validation ids: {}", format_id_ranges(dataset.train_ids),
                                            format_id_ranges(dataset.val_ids));
  if (!in_training && !in_validation) {
    throw std::runtime_error(fmt::format("volume {} does not exist in dataset {} ({}); pass one of these to --volume",
                                         id, dataset.dir.string(), available));
  }

  const Split found = in_validation ? Split::kValidation : Split::kTraining;
  if (!requested.empty() && requested != split_name(found)) {
    throw std::runtime_error(fmt::format("volume {} is in the {} split, not the {} split of dataset {} ({}); drop "
                                         "--split or pass --split {}",
                                         id, split_name(found), requested, dataset.dir.string(), available,
                                         split_name(found)));
  }
  return found;
}

// The newest complete dataset of `config` under <dataset_dir>/<config_id>/,
// without building one.
DatasetInfo find_existing_dataset(const Config& config) {
  const std::string config_id = dataset_config_id(config);
  const fs::path root = fs::path(config.dataset_dir) / config_id;
  std::vector<fs::path> candidates;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, error)) {
    if (entry.is_directory() && !entry.path().filename().string().starts_with(".")) candidates.push_back(entry.path());
  }
  if (candidates.empty()) {
    throw DatasetError(fmt::format("no dataset for this config (config id {}) under {} (relative paths start at the "
                                   "current directory); build it with `scaffold generate_dataset -c CONFIG`, or "
                                   "pass --dataset-dir with the dataset_dir the benchmark used",
                                   config_id, fs::absolute(root).string()));
  }

  // Names start with a UTC timestamp, so reverse name order is newest first.
  std::sort(candidates.begin(), candidates.end(), std::greater<>());
  std::string failures;
  for (const fs::path& candidate : candidates) {
    try {
      return open_dataset(candidate);
    } catch (const DatasetError& failure) {
      failures += fmt::format("{}{}", failures.empty() ? "" : "; ", failure.what());
    }
  }
  throw DatasetError(fmt::format("no usable dataset under {}: {}", root.string(), failures));
}

// The dataset that a run trained on: result.json's dataset_dir when it exists
// from here, otherwise the newest dataset of the run's config.
DatasetInfo find_run_dataset(const fs::path& run_dir, const Config& config, bool dataset_dir_given) {
  const fs::path result_path = run_dir / "result.json";
  if (!dataset_dir_given && fs::exists(result_path)) {
    try {
      const nlohmann::json result = nlohmann::json::parse(read_file(result_path));
      if (result.contains("dataset_dir") && result["dataset_dir"].is_string()) {
        const fs::path recorded = result["dataset_dir"].get<std::string>();
        if (fs::is_directory(recorded)) return open_dataset(recorded);
        spdlog::debug("{} names dataset {}, which does not exist from {}", result_path.string(), recorded.string(),
                      fs::current_path().string());
      }
    } catch (const nlohmann::json::exception& error) {
      spdlog::warn("{} is not valid JSON ({}); looking up the dataset from config.yaml", result_path.string(),
                   error.what());
    }
  }
  return find_existing_dataset(config);
}

void check_options(const ShowOptions& options) {
  if (options.run_dir.empty() && options.config_files.empty()) {
    throw ConfigError("show needs a run directory (scaffold show RUN_DIR) or a config (scaffold show -c CONFIG "
                      "--volume ID)");
  }
  if (!options.run_dir.empty() && !options.config_files.empty()) {
    throw ConfigError(fmt::format("show takes a run directory ({}) or -c CONFIG, not both; a run uses its own "
                                  "config.yaml",
                                  options.run_dir));
  }
  if (!options.config_files.empty() && options.volume < 0) {
    throw ConfigError("show -c CONFIG needs --volume ID, the dataset volume to draw");
  }
}

// Loads the run's config.yaml or the merged -c files, with --dataset-dir applied over either.
Config load_show_config(const ShowOptions& options) {
  ConfigOverrides overrides;
  if (!options.dataset_dir.empty()) overrides.values["dataset_dir"] = options.dataset_dir;
  if (options.run_dir.empty()) {
    const std::vector<fs::path> files(options.config_files.begin(), options.config_files.end());
    return load_config(files, overrides);
  }

  const fs::path run_dir = options.run_dir;
  if (!fs::is_directory(run_dir)) {
    throw std::runtime_error(fmt::format("run directory {} does not exist", run_dir.string()));
  }
  if (!fs::exists(run_dir / "config.yaml")) {
    throw std::runtime_error(fmt::format("{} is not a run directory: it has no config.yaml; pass a directory that "
                                         "scaffold benchmark created",
                                         run_dir.string()));
  }
  return load_config({run_dir / "config.yaml"}, overrides);
}

int first_validation_volume(const DatasetInfo& dataset) {
  if (dataset.val_ids.empty()) {
    throw std::runtime_error(fmt::format("dataset {} has no validation volume; pass --volume ID ({})",
                                         dataset.dir.string(), format_id_ranges(dataset.train_ids)));
  }
  return dataset.val_ids.front();
}

}  // namespace

CLI::App* add_show_command(CLI::App& app, ShowOptions& options) {
  CLI::App* show = app.add_subcommand(
      "show", "Write a PNG of one volume: middle slices along each axis and a maximum-intensity projection of the "
              "volume, its true mask and, for a run directory, the prediction of the run's best checkpoint");
  show->add_option("run_dir", options.run_dir, "Run directory of scaffold benchmark (needs a checkpoint)");
  show->add_option("-c,--config", options.config_files,
                   "YAML config file(s) of the dataset, merged in order (instead of a run directory)");
  show->add_option("--volume", options.volume,
                   "Volume id in the dataset (default for a run: its first validation volume)")
      ->check(CLI::NonNegativeNumber);
  show->add_option("--split", options.split, "Split that must contain the volume (default: the one that does)")
      ->check(CLI::IsMember({"training", "validation"}));
  show->add_option("-o,--output", options.output,
                   "PNG file to write (default: val_<ID>.png or train_<ID>.png in the current directory)");
  show->add_option("--dataset-dir", options.dataset_dir,
                   "Root of the dataset cache, when it is not the config's dataset_dir from the current directory");
  return show;
}

int run_show_command(const ShowOptions& options) {
  check_options(options);
  const bool from_run = !options.run_dir.empty();
  const fs::path run_dir = options.run_dir;
  const Config config = load_show_config(options);
  const DatasetInfo dataset =
      from_run ? find_run_dataset(run_dir, config, !options.dataset_dir.empty()) : find_existing_dataset(config);

  const int id = options.volume >= 0 ? options.volume : first_validation_volume(dataset);
  const Split split = resolve_split(dataset, id, options.split);
  const Sample sample = load_sample(dataset, split, id);

  std::optional<TrainedModel> trained;
  if (from_run) {
    configure_compute_threads();
    try {
      trained = load_trained_model(config, dataset.n_classes, run_dir);
    } catch (const NoCheckpointError& error) {
      throw NoCheckpointError(fmt::format("{}. To draw the volume without a prediction, run: scaffold show -c {} "
                                          "--volume {}",
                                          error.what(), (run_dir / "config.yaml").string(), id));
    }
    spdlog::info("model: {} (epoch {}, validation Dice {:.4f})", trained->checkpoint.string(), trained->epoch,
                 trained->val_dice);
  }

  const VolumeShape shape = {dataset.vol_size, dataset.vol_size, dataset.vol_size};

  const fs::path output = options.output.empty()
                              ? fs::path(fmt::format("{}_{}.png", split == Split::kValidation ? "val" : "train", id))
                              : fs::path(options.output);
  if (trained) {
    const std::vector<std::uint16_t> predicted = predict_mask(trained->model, sample.volume, dataset.vol_size);
    write_slice_image(output, shape, sample.volume, sample.mask, predicted);
    spdlog::info("{} volume {}: prediction Dice {:.4f}", split_name(split), id,
                 mask_dice(predicted, sample.mask, dataset.vol_size, dataset.n_classes));
  } else {
    write_slice_image(output, shape, sample.volume, sample.mask);
  }

  const SliceImageLayout layout = slice_image_layout(shape, trained.has_value());
  spdlog::info("wrote {} ({} x {} pixels; rows: slices across depth, height and width, maximum over depth; "
               "columns: volume, true mask{})",
               output.string(), layout.width_px, layout.height_px, trained ? ", prediction" : "");
  return 0;
}

}  // namespace scaffold
