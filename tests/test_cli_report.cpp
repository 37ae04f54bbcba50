// `scaffold show`, `scaffold report` and the end-of-training slice images,
// through the real scaffold command on two tiny runs. Run A saves a checkpoint
// and trains 1 epoch, so its prediction is still imperfect. Run B saves no
// checkpoint and trains 2 epochs.
#include <gtest/gtest.h>
#include <stb/stb_image.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "core/hash.hpp"
#include "dataset/dataset.hpp"
#include "nn/unet.hpp"
#include "report/run_figures.hpp"
#include "report/slice_images.hpp"
#include "report_html_support.hpp"
#include "train/run_files.hpp"

namespace fs = std::filesystem;

using scaffold_test::check_html;
using scaffold_test::CommandResult;
using scaffold_test::only_run_dir;
using scaffold_test::python_available;
using scaffold_test::run_in;
using scaffold_test::scaffold_command;
using scaffold_test::TempDir;

namespace {

// 16^3 volumes, 1 class, a 1-level U-Net; 7 training and 3 validation
// volumes. The Dice target is out of reach, so each run trains to its cap.
constexpr const char* kTinyConfig = R"(seed: 11
n_categories: 1
n_instances_used_per_fractal: 30
problem_scale: 4
unet_bottleneck_dim: 3
target_dice: 0.9999
warmup_batches: 0
)";

constexpr int kEdge = 16;
constexpr int kClasses = 2;  // background and one fractal class

// A decoded RGB image.
struct Picture {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;

  scaffold::Rgb at(scaffold::PixelPosition position) const {
    const std::size_t i = (static_cast<std::size_t>(position.y) * width + position.x) * 3;
    return {pixels[i], pixels[i + 1], pixels[i + 2]};
  }
};

Picture read_png(const fs::path& path) {
  Picture picture;
  int channels = 0;
  stbi_uc* data = stbi_load(path.c_str(), &picture.width, &picture.height, &channels, 3);
  if (data == nullptr) {
    ADD_FAILURE() << path << " cannot be decoded: " << stbi_failure_reason();
    return picture;
  }
  picture.pixels.assign(data, data + static_cast<std::size_t>(picture.width) * picture.height * 3);
  stbi_image_free(data);
  return picture;
}

// The slice image's volume colour rule: clamp to [0, 1], scale to 0..255, round.
std::uint8_t channel_byte(float value) {
  if (!(value > 0)) return 0;
  if (value >= 1) return 255;
  return static_cast<std::uint8_t>(std::lround(value * 255.0f));
}

std::size_t voxel_index(int d, int h, int w) { return (static_cast<std::size_t>(d) * kEdge + h) * kEdge + w; }

// The class of every voxel predicted by the run's best checkpoint, computed
// here from the checkpoint's weights with a forward pass and argmax.
std::vector<std::int64_t> predict_with_best_checkpoint(const fs::path& run, const std::vector<float>& volume) {
  torch::serialize::InputArchive archive;
  archive.load_from((run / "checkpoints/checkpoint_best.pt").string());
  torch::serialize::InputArchive model_archive;
  archive.read("model", model_archive);
  scaffold::UNet model(3, kClasses, 1, 8);
  model->load(model_archive);
  model->eval();

  torch::NoGradGuard no_grad;
  const torch::Tensor input = torch::from_blob(const_cast<float*>(volume.data()), {1, 3, kEdge, kEdge, kEdge},
                                               torch::kFloat32).clone();
  const torch::Tensor labels = model->forward(input).argmax(1).reshape({-1}).contiguous();
  return std::vector<std::int64_t>(labels.data_ptr<std::int64_t>(), labels.data_ptr<std::int64_t>() + labels.numel());
}

// Expects the depth-slice row and the depth-projection row of `picture` to
// show `sample`'s volume and mask, and `predicted` in the third column when
// given. The projection shows each channel's maximum and the largest class
// over depth, so a volume with any foreground has some in that row. Returns
// the number of panel pixels where the prediction and the true mask differ.
int expect_depth_panels(const Picture& picture, const scaffold::Sample& sample,
                        const std::vector<std::int64_t>& predicted = {}) {
  using scaffold::PanelColumn;
  using scaffold::PanelRow;
  const scaffold::SliceImageLayout layout = scaffold::slice_image_layout({kEdge, kEdge, kEdge}, !predicted.empty());
  const std::size_t channel_stride = static_cast<std::size_t>(kEdge) * kEdge * kEdge;
  int foreground = 0;
  int differences = 0;
  int wrong_pixels = 0;
  std::string first_wrong;
  const auto check = [&](PanelRow row, PanelColumn column, int h, int w, scaffold::Rgb expected) {
    const scaffold::Rgb actual = picture.at(layout.voxel_pixel(row, column, h, w));
    if (actual == expected) return;
    if (wrong_pixels++ == 0) {
      first_wrong = fmt::format("panel row {}, column {}, (h, w) = ({}, {}): rgb({}, {}, {}), expected rgb({}, {}, {})",
                                static_cast<int>(row), static_cast<int>(column), h, w, actual.r, actual.g, actual.b,
                                expected.r, expected.g, expected.b);
    }
  };

  for (const PanelRow row : {PanelRow::kSliceDepth, PanelRow::kProjectionDepth}) {
    const int first_depth = row == PanelRow::kSliceDepth ? kEdge / 2 : 0;
    const int last_depth = row == PanelRow::kSliceDepth ? kEdge / 2 : kEdge - 1;
    for (int h = 0; h < kEdge; ++h) {
      for (int w = 0; w < kEdge; ++w) {
        float channels[3] = {0, 0, 0};
        int true_class = 0;
        std::int64_t predicted_class = 0;
        for (int d = first_depth; d <= last_depth; ++d) {
          const std::size_t voxel = voxel_index(d, h, w);
          for (std::size_t c = 0; c < 3; ++c) {
            channels[c] = std::max(channels[c], sample.volume[c * channel_stride + voxel]);
          }
          true_class = std::max<int>(true_class, sample.mask[voxel]);
          if (!predicted.empty()) predicted_class = std::max(predicted_class, predicted[voxel]);
        }
        check(row, PanelColumn::kVolume, h, w,
              {channel_byte(channels[0]), channel_byte(channels[1]), channel_byte(channels[2])});
        check(row, PanelColumn::kTrueMask, h, w, scaffold::class_colour(true_class));
        if (!predicted.empty()) {
          check(row, PanelColumn::kPredictedMask, h, w, scaffold::class_colour(static_cast<int>(predicted_class)));
          differences += predicted_class != true_class;
        }
        foreground += true_class != 0;
      }
    }
  }
  EXPECT_EQ(wrong_pixels, 0) << "volume " << sample.volume_index << ", first wrong pixel: " << first_wrong;
  EXPECT_GT(foreground, 0) << "volume " << sample.volume_index << " has no foreground voxel, so no class colour was "
                           << "checked";
  return differences;
}

// The ids in an error message's list "training ids: 0, 2-4, 9;", ranges expanded.
std::vector<int> listed_ids(const std::string& output, const std::string& label) {
  std::smatch match;
  if (!std::regex_search(output, match, std::regex(label + R"(: ([0-9, -]*))"))) return {};
  std::vector<int> ids;
  const std::string list = match[1].str();
  const std::regex item(R"((\d+)(?:-(\d+))?)");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), item); it != std::sregex_iterator(); ++it) {
    const int first = std::stoi((*it)[1].str());
    const int last = (*it)[2].matched ? std::stoi((*it)[2].str()) : first;
    for (int id = first; id <= last; ++id) ids.push_back(id);
  }
  return ids;
}

// The cells of the summary table row that starts with `first_cell`, split at
// runs of two or more spaces.
std::vector<std::string> table_row(const std::string& output, const std::string& first_cell) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(first_cell + "  ", 0) != 0) continue;
    const std::regex separator("  +");
    return {std::sregex_token_iterator(line.begin(), line.end(), separator, -1), std::sregex_token_iterator()};
  }
  return {};
}

nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(scaffold::read_file(path)); }

// The dataset of the tiny config, built with generate_dataset (no training).
class CliShow : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("cli_show");
    scaffold::write_file_atomic(dir_->path() / "tiny.yml", std::string_view(kTinyConfig));
    generate_ = new CommandResult(run_in(dir_->path(), scaffold_command("generate_dataset -c tiny.yml")));
  }

  static void TearDownTestSuite() {
    delete generate_;
    delete dir_;
  }

  void SetUp() override {
    ASSERT_EQ(generate_->exit_code, 0) << generate_->output;
    std::smatch found;
    ASSERT_TRUE(std::regex_search(generate_->output, found, std::regex(R"(dataset ready: (\S+))")))
        << generate_->output;
    dataset_ = scaffold::open_dataset(dir() / found[1].str());
    ASSERT_EQ(dataset_.val_ids.size(), 3u);
    ASSERT_EQ(dataset_.train_ids.size(), 7u);
  }

  static const fs::path& dir() { return dir_->path(); }

  static TempDir* dir_;
  static CommandResult* generate_;
  scaffold::DatasetInfo dataset_;
};

TempDir* CliShow::dir_ = nullptr;
CommandResult* CliShow::generate_ = nullptr;

// The two trained runs. Each test is its own process under CTest, so the runs
// are trained once per test: the checks are grouped into few tests.
class CliRuns : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("cli_runs");
    scaffold::write_file_atomic(dir_->path() / "tiny.yml", std::string_view(kTinyConfig));
    benchmark_a_ = new CommandResult(run_in(
        dir_->path(),
        scaffold_command("benchmark -c tiny.yml --epochs 1 --checkpoint-interval 1 --base-run-dir runs_a")));
    benchmark_b_ = new CommandResult(run_in(
        dir_->path(),
        scaffold_command("benchmark -c tiny.yml --epochs 2 --checkpoint-interval -1 --base-run-dir runs_b")));
  }

  static void TearDownTestSuite() {
    delete benchmark_a_;
    delete benchmark_b_;
    delete dir_;
  }

  void SetUp() override {
    ASSERT_EQ(benchmark_a_->exit_code, 0) << benchmark_a_->output;
    ASSERT_EQ(benchmark_b_->exit_code, 0) << benchmark_b_->output;
    run_a_ = only_run_dir(dir_->path() / "runs_a");
    run_b_ = only_run_dir(dir_->path() / "runs_b");
    const std::string dataset_dir = read_json(run_a_ / "result.json")["dataset_dir"].get<std::string>();
    dataset_ = scaffold::open_dataset(dir_->path() / dataset_dir);
    ASSERT_EQ(dataset_.val_ids.size(), 3u);
    ASSERT_EQ(dataset_.train_ids.size(), 7u);
  }

  static const fs::path& dir() { return dir_->path(); }

  void expect_predicted_validation_images() {
    EXPECT_NE(benchmark_a_->output.find("slice images: 2 written"), std::string::npos) << benchmark_a_->output;
    const scaffold::SliceImageLayout layout = scaffold::slice_image_layout({kEdge, kEdge, kEdge}, true);
    int differences = 0;
    for (int i = 0; i < 2; ++i) {
      const int id = dataset_.val_ids[static_cast<std::size_t>(i)];
      const fs::path path = run_a_ / "images" / fmt::format("val_{}.png", id);
      ASSERT_TRUE(fs::exists(path)) << path;
      const Picture picture = read_png(path);
      EXPECT_EQ(picture.width, layout.width_px);
      EXPECT_EQ(picture.height, layout.height_px);

      const scaffold::Sample sample = scaffold::load_sample(dataset_, scaffold::Split::kValidation, id);
      differences += expect_depth_panels(picture, sample, predict_with_best_checkpoint(run_a_, sample.volume));
    }
    EXPECT_GT(differences, 0) << "the prediction equals the true mask in every checked pixel, so this test cannot "
                                 "tell the prediction column from the true mask column";
    EXPECT_FALSE(fs::exists(run_a_ / "images" / fmt::format("val_{}.png", dataset_.val_ids[2])));
  }

  // Run B has no checkpoint, so its prediction comes from the final weights,
  // which no file keeps; the test checks the layout and the first two columns.
  void expect_images_from_final_weights() {
    EXPECT_NE(benchmark_b_->output.find("no checkpoint (checkpoint_interval is -1), predicting with the final weights"),
              std::string::npos)
        << benchmark_b_->output;
    const int id = dataset_.val_ids.front();
    const Picture picture = read_png(run_b_ / "images" / fmt::format("val_{}.png", id));
    const scaffold::SliceImageLayout layout = scaffold::slice_image_layout({kEdge, kEdge, kEdge}, true);
    EXPECT_EQ(picture.width, layout.width_px);
    EXPECT_EQ(picture.height, layout.height_px);
    expect_depth_panels(picture, scaffold::load_sample(dataset_, scaffold::Split::kValidation, id));
  }

  void expect_show_matches_end_of_training_image() {
    // Without --volume and -o: the first validation volume, into val_<id>.png here.
    const int id = dataset_.val_ids.front();
    const fs::path output = dir() / fmt::format("val_{}.png", id);
    fs::remove(output);
    const CommandResult show = run_in(dir(), scaffold_command("show '" + run_a_.string() + "'"));
    ASSERT_EQ(show.exit_code, 0) << show.output;
    ASSERT_TRUE(fs::exists(output)) << show.output;

    const Picture show_image = read_png(output);
    const Picture training_image = read_png(run_a_ / "images" / fmt::format("val_{}.png", id));
    EXPECT_EQ(show_image.width, training_image.width);
    EXPECT_EQ(show_image.height, training_image.height);
    EXPECT_TRUE(show_image.pixels == training_image.pixels) << "show and the end-of-training image differ";
  }

  void expect_show_without_checkpoint_explains() {
    const CommandResult show = run_in(dir(), scaffold_command("show '" + run_b_.string() + "' -o nothing.png"));
    EXPECT_EQ(show.exit_code, 1) << show.output;
    EXPECT_NE(show.output.find("has no checkpoint"), std::string::npos) << show.output;
    EXPECT_NE(show.output.find("scaffold show -c " + (run_b_ / "config.yaml").string()), std::string::npos)
        << show.output;
    EXPECT_FALSE(fs::exists(dir() / "nothing.png"));
  }

  void expect_report_of_one_run() {
    const CommandResult report = run_in(dir(), scaffold_command("report '" + run_a_.string() + "'"));
    ASSERT_EQ(report.exit_code, 0) << report.output;

    // The row of run A, with the values of its result.json.
    const nlohmann::json result = read_json(run_a_ / "result.json");
    const std::vector<std::string> expected = {
        run_a_.filename().string(),
        fmt::format("{:.2f}", result["figure_of_merit_s"].get<double>()),
        result["converged"].get<bool>() ? "yes" : "no",
        std::to_string(result["epochs"].get<int>()),
        fmt::format("{:.4f}", result["final_val_dice"].get<double>()),
        fmt::format("{:.2f}", result["train_samples_per_s"].get<double>()),
        fmt::format("{:.4f}", result["median_minibatch_s"].get<double>()),
        result["host"].get<std::string>(),
        result["scaffold_version"].get<std::string>(),
        result["scaffold_commit"].get<std::string>(),
        result["libtorch_version"].get<std::string>()};
    EXPECT_EQ(table_row(report.output, run_a_.filename().string()), expected) << report.output;
    EXPECT_EQ(result["epochs"].get<int>(), 1);
    EXPECT_EQ(table_row(report.output, "run")[1], "FOM (s)") << report.output;

    if (!python_available()) GTEST_SKIP() << scaffold_test::kPython << " is missing, so the page cannot be parsed";
    const fs::path page = run_a_ / "report.html";
    ASSERT_TRUE(fs::exists(page)) << report.output;
    const nlohmann::json parsed = check_html(page, dir());
    ASSERT_FALSE(parsed.is_null());
    EXPECT_EQ(parsed["errors"], nlohmann::json::array()) << parsed["errors"].dump(2);

    // Every figure and both images, byte for byte, in page order.
    std::vector<std::string> embedded;
    for (const auto& image : parsed["images"]) embedded.push_back(image["sha256"].get<std::string>());
    std::vector<std::string> files;
    for (const std::string& name : scaffold::run_figure_names()) {
      files.push_back(scaffold::sha256_hex(scaffold::read_file(run_a_ / "figures" / name)));
    }
    for (std::size_t i = 0; i < 2; ++i) {
      files.push_back(scaffold::sha256_hex(
          scaffold::read_file(run_a_ / "images" / fmt::format("val_{}.png", dataset_.val_ids[i]))));
    }
    EXPECT_EQ(embedded, files);

    // One table row per train_stats.csv row, with the same epoch and Dice.
    const std::vector<scaffold::EpochStats> stats = scaffold::read_train_stats(run_a_ / "train_stats.csv");
    const nlohmann::json& epochs = parsed["tables"]["epochs-1"];
    ASSERT_EQ(epochs.size(), stats.size() + 1) << epochs.dump(2);
    for (std::size_t i = 0; i < stats.size(); ++i) {
      EXPECT_EQ(epochs[i + 1][0], std::to_string(stats[i].epoch));
      EXPECT_EQ(epochs[i + 1][7], fmt::format("{:.4f}", stats[i].val_dice));
      EXPECT_EQ(epochs[i + 1][10], std::to_string(stats[i].total_optimizer_steps));
    }
    EXPECT_EQ(parsed["texts"]["config-1"], scaffold::read_file(run_a_ / "config.yaml"));
  }

  void expect_report_of_two_runs() {
    const fs::path page = dir() / "report.html";
    fs::remove(page);
    const CommandResult report =
        run_in(dir(), scaffold_command("report '" + run_a_.string() + "' '" + run_b_.string() + "'"));
    ASSERT_EQ(report.exit_code, 0) << report.output;
    EXPECT_EQ(table_row(report.output, run_a_.filename().string()).size(), 11u) << report.output;
    const std::vector<std::string> row_b = table_row(report.output, run_b_.filename().string());
    ASSERT_EQ(row_b.size(), 11u) << report.output;
    // Run B may reach the Dice target before its second epoch, so its epoch
    // count comes from its own result.json.
    EXPECT_EQ(row_b[3], std::to_string(read_json(run_b_ / "result.json")["epochs"].get<int>()));
    ASSERT_TRUE(fs::exists(page)) << "several runs write report.html into the current directory\n" << report.output;

    if (!python_available()) GTEST_SKIP() << scaffold_test::kPython << " is missing, so the page cannot be parsed";
    const nlohmann::json parsed = check_html(page, dir());
    ASSERT_FALSE(parsed.is_null());
    EXPECT_EQ(parsed["errors"], nlohmann::json::array()) << parsed["errors"].dump(2);

    const nlohmann::json& table = parsed["tables"]["comparison-table"];
    ASSERT_FALSE(table.empty());
    EXPECT_EQ(table[0].size(), 3u) << table[0].dump();
    bool epochs_row = false;
    for (const auto& row : table) {
      if (row[0] == "Epochs") {
        epochs_row = true;
        EXPECT_EQ(row[1], "1");
        EXPECT_EQ(row[2], "2");
      }
    }
    EXPECT_TRUE(epochs_row) << table.dump(2);

    // Five overlaid charts: run A's one epoch is a single marker, run B's two epochs make a line.
    const nlohmann::json& images = parsed["images"];
    ASSERT_GT(images.size(), 5u);
    for (std::size_t i = 0; i < 5; ++i) {
      EXPECT_EQ(images[i]["media_type"], "image/svg+xml");
      EXPECT_EQ(images[i]["polylines"], 1) << images[i]["alt"];
    }
    EXPECT_EQ(parsed["tables"]["side-by-side"].size(), 1 + scaffold::run_figure_names().size());
    EXPECT_EQ(parsed["tables"]["epochs-1"].size(), 2u);
    EXPECT_EQ(parsed["tables"]["epochs-2"].size(), 3u);
  }

  void expect_report_output_option() {
    const CommandResult report =
        run_in(dir(), scaffold_command("report '" + run_b_.string() + "' -o custom/page.html"));
    EXPECT_NE(report.exit_code, 0) << "writing into a missing folder succeeded:\n" << report.output;
    EXPECT_NE(report.output.find("custom/page.html"), std::string::npos) << report.output;

    fs::create_directories(dir() / "custom");
    const CommandResult written =
        run_in(dir(), scaffold_command("report '" + run_b_.string() + "' -o custom/page.html"));
    ASSERT_EQ(written.exit_code, 0) << written.output;
    EXPECT_TRUE(fs::exists(dir() / "custom/page.html"));
  }

  static TempDir* dir_;
  static CommandResult* benchmark_a_;
  static CommandResult* benchmark_b_;
  fs::path run_a_;
  fs::path run_b_;
  scaffold::DatasetInfo dataset_;
};

TempDir* CliRuns::dir_ = nullptr;
CommandResult* CliRuns::benchmark_a_ = nullptr;
CommandResult* CliRuns::benchmark_b_ = nullptr;

}  // namespace

// ---------------------------------------------------------------- scaffold show on a dataset

TEST_F(CliShow, DatasetVolumeImage) {
  const int id = dataset_.train_ids.front();
  const CommandResult show =
      run_in(dir(), scaffold_command(fmt::format("show -c tiny.yml --volume {} -o shown_train.png", id)));
  ASSERT_EQ(show.exit_code, 0) << show.output;

  const Picture picture = read_png(dir() / "shown_train.png");
  const scaffold::SliceImageLayout layout = scaffold::slice_image_layout({kEdge, kEdge, kEdge}, false);
  EXPECT_EQ(picture.width, layout.width_px);
  EXPECT_EQ(picture.height, layout.height_px);
  expect_depth_panels(picture, scaffold::load_sample(dataset_, scaffold::Split::kTraining, id));
}

TEST_F(CliShow, MissingVolumeListsIds) {
  const CommandResult show = run_in(dir(), scaffold_command("show -c tiny.yml --volume 999"));
  EXPECT_EQ(show.exit_code, 1) << show.output;
  EXPECT_NE(show.output.find("volume 999 does not exist"), std::string::npos) << show.output;
  // Every id is listed, single ids alone and consecutive ones as ranges.
  EXPECT_EQ(listed_ids(show.output, "training ids"), dataset_.train_ids) << show.output;
  EXPECT_EQ(listed_ids(show.output, "validation ids"), dataset_.val_ids) << show.output;
  EXPECT_FALSE(fs::exists(dir() / "val_999.png"));
  EXPECT_FALSE(fs::exists(dir() / "train_999.png"));
}

TEST_F(CliShow, WrongSplitNamesRightOne) {
  const int id = dataset_.train_ids.front();
  const CommandResult show =
      run_in(dir(), scaffold_command(fmt::format("show -c tiny.yml --volume {} --split validation", id)));
  EXPECT_EQ(show.exit_code, 1) << show.output;
  EXPECT_NE(show.output.find(fmt::format("volume {} is in the training split", id)), std::string::npos) << show.output;
}

TEST_F(CliShow, InvalidArgumentsRejected) {
  const CommandResult missing_dir = run_in(dir(), scaffold_command("show no_such_run"));
  EXPECT_EQ(missing_dir.exit_code, 1) << missing_dir.output;
  EXPECT_NE(missing_dir.output.find("run directory no_such_run does not exist"), std::string::npos)
      << missing_dir.output;

  const CommandResult both = run_in(dir(), scaffold_command("show some_run -c tiny.yml --volume 1"));
  EXPECT_EQ(both.exit_code, 2) << both.output;
  EXPECT_NE(both.output.find("not both"), std::string::npos) << both.output;

  const CommandResult no_volume = run_in(dir(), scaffold_command("show -c tiny.yml"));
  EXPECT_EQ(no_volume.exit_code, 2) << no_volume.output;
  EXPECT_NE(no_volume.output.find("--volume"), std::string::npos) << no_volume.output;

  const CommandResult bad_split = run_in(dir(), scaffold_command("show -c tiny.yml --volume 1 --split test"));
  EXPECT_NE(bad_split.exit_code, 0) << bad_split.output;
  EXPECT_NE(bad_split.output.find("--split"), std::string::npos) << bad_split.output;

  const CommandResult no_dataset =
      run_in(dir(), scaffold_command("show -c tiny.yml --volume 1 --dataset-dir elsewhere"));
  EXPECT_EQ(no_dataset.exit_code, 1) << no_dataset.output;
  EXPECT_NE(no_dataset.output.find("no dataset for this config"), std::string::npos) << no_dataset.output;
  EXPECT_NE(no_dataset.output.find("scaffold generate_dataset"), std::string::npos) << no_dataset.output;
}

TEST(CliReportErrors, MissingOrEmptyDirectoryFails) {
  const TempDir temp("cli_report_errors");
  const CommandResult report = run_in(temp.path(), scaffold_command("report no_such_run"));
  EXPECT_EQ(report.exit_code, 1) << report.output;
  EXPECT_NE(report.output.find("run directory no_such_run does not exist"), std::string::npos) << report.output;

  fs::create_directories(temp.path() / "empty_dir");
  const CommandResult not_a_run = run_in(temp.path(), scaffold_command("report empty_dir"));
  EXPECT_EQ(not_a_run.exit_code, 1) << not_a_run.output;
  EXPECT_NE(not_a_run.output.find("not a benchmark run directory"), std::string::npos) << not_a_run.output;
}

// ---------------------------------------------------------------- trained runs

TEST_F(CliRuns, EndOfTrainingImagesAndShow) {
  {
    SCOPED_TRACE("run A: images with the prediction");
    expect_predicted_validation_images();
  }
  {
    SCOPED_TRACE("run B: images predicted with the final weights");
    expect_images_from_final_weights();
  }
  {
    SCOPED_TRACE("show run A");
    expect_show_matches_end_of_training_image();
  }
  {
    SCOPED_TRACE("show run B");
    expect_show_without_checkpoint_explains();
  }
}

TEST_F(CliRuns, ReportOfOneAndTwoRuns) {
  {
    SCOPED_TRACE("report of run A");
    expect_report_of_one_run();
  }
  {
    SCOPED_TRACE("report of runs A and B");
    expect_report_of_two_runs();
  }
  {
    SCOPED_TRACE("report -o");
    expect_report_output_option();
  }
}
