// Tests for the report page builder, without LibTorch. A synthetic run
// directory with hand-written result.json, train_stats.csv and config.yaml,
// real figures and real slice images is turned into a page, which Python's
// html.parser checks and headless Chromium renders.
#include <gtest/gtest.h>
#include <stb/stb_image.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_test_support.hpp"
#include "core/atomic_file.hpp"
#include "core/hash.hpp"
#include "report/report_page.hpp"
#include "report/run_figures.hpp"
#include "report/run_report.hpp"
#include "report/slice_images.hpp"
#include "report_html_support.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

using scaffold_test::check_html;
using scaffold_test::CommandResult;
using scaffold_test::python_available;
using scaffold_test::run_in;

// Edge of the synthetic slice images' volumes, and the voxel whose classes the tests set.
constexpr int kImageEdge = 8;
constexpr int kMarkedDepth = kImageEdge / 2;  // on the middle depth slice
constexpr int kMarkedHeight = 2;
constexpr int kMarkedWidth = 5;
constexpr std::uint16_t kMarkedTrueClass = 2;
constexpr std::uint16_t kMarkedPredictedClass = 1;

// A host name and config text that need escaping, and a byte that is not UTF-8.
const std::string kOddHost = "node<1>&'x'\"";
const std::string kConfigText =
    "job_name: \"<script>alert('x')</script> & more\"\nseed: 7\ncomment: caf\xC3\xA9 \xFF end\n";
const std::string kConfigTextAsParsed =
    "job_name: \"<script>alert('x')</script> & more\"\nseed: 7\ncomment: caf\xC3\xA9 \xEF\xBF\xBD end\n";

struct SyntheticRun {
  double figure_of_merit_s = 12.3456;
  double final_val_dice = 0.91234;
  double train_samples_per_s = 4.567;
  double median_minibatch_s = 0.12346;
  std::string host = "node-1";
  std::vector<double> val_dice = {0.5, 0.75, 0.91234};
};

std::string train_stats_text(const SyntheticRun& spec) {
  std::string text = "epoch,epoch_loss,overall_loss,val_loss_epoch,val_loss_avg,train_dice,val_dice,epoch_duration,"
                     "optimizer_steps,total_optimizer_steps\n";
  for (std::size_t i = 0; i < spec.val_dice.size(); ++i) {
    const int epoch = static_cast<int>(i) + 1;
    // Losses fall by half each epoch: overall_loss = 2 / 2^(epoch - 1) over 7 samples.
    const double overall = 2.0 / (1 << i);
    text += std::to_string(epoch) + "," + std::to_string(overall * 7) + "," + std::to_string(overall) + "," +
            std::to_string(overall * 3) + "," + std::to_string(overall) + ",0.25," + std::to_string(spec.val_dice[i]) +
            ",1.5,7," + std::to_string(7 * epoch) + "\n";
  }
  return text;
}

nlohmann::json result_json(const SyntheticRun& spec) {
  nlohmann::json per_epoch = nlohmann::json::array();
  for (std::size_t i = 0; i < spec.val_dice.size(); ++i) {
    per_epoch.push_back({{"epoch", i + 1}, {"learning_rate", 0.001 / (i + 1)}});
  }
  return {{"figure_of_merit_s", spec.figure_of_merit_s},
          {"converged", true},
          {"target_dice", 0.9},
          {"final_val_dice", spec.final_val_dice},
          {"epochs", spec.val_dice.size()},
          {"total_optimizer_steps", 7 * spec.val_dice.size()},
          {"train_samples_per_s", spec.train_samples_per_s},
          {"median_minibatch_s", spec.median_minibatch_s},
          {"n_categories", 2},
          {"host", spec.host},
          {"scaffold_version", "0.1.0"},
          {"scaffold_commit", "abc1234"},
          {"libtorch_version", "1.13.0"},
          {"per_epoch", per_epoch}};
}

// Volume, true mask and prediction of kImageEdge^3 voxels: all zero except the
// marked voxel, which has class kMarkedTrueClass in the true mask and
// kMarkedPredictedClass in the prediction.
void write_marked_image(const fs::path& path) {
  const std::size_t voxels = static_cast<std::size_t>(kImageEdge) * kImageEdge * kImageEdge;
  const std::size_t marked =
      (static_cast<std::size_t>(kMarkedDepth) * kImageEdge + kMarkedHeight) * kImageEdge + kMarkedWidth;
  std::vector<float> volume(3 * voxels, 0.0f);
  std::vector<std::uint16_t> truth(voxels, 0);
  std::vector<std::uint16_t> predicted(voxels, 0);
  truth[marked] = kMarkedTrueClass;
  predicted[marked] = kMarkedPredictedClass;
  write_slice_image(path, {kImageEdge, kImageEdge, kImageEdge}, volume, truth, predicted);
}

// Writes a complete run directory: result.json, train_stats.csv, config.yaml,
// the five figures and three slice images named out of numeric order.
void write_synthetic_run(const fs::path& dir, const SyntheticRun& spec) {
  fs::create_directories(dir / "images");
  write_file_atomic(dir / "result.json", result_json(spec).dump(2));
  write_file_atomic(dir / "train_stats.csv", train_stats_text(spec));
  write_file_atomic(dir / "config.yaml", kConfigText);

  std::vector<EpochFigureRow> rows;
  for (std::size_t i = 0; i < spec.val_dice.size(); ++i) {
    const double overall = 2.0 / (1 << i);
    rows.push_back({static_cast<int>(i) + 1, overall, overall, spec.val_dice[i], 0.001 / (i + 1), 1.5});
  }
  write_run_figures(dir, rows, {16, 2, 1, 0.9});
  for (const char* name : {"val_10.png", "val_2.png", "val_3.png"}) write_marked_image(dir / "images" / name);
}

class ReportHtml : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "scaffold-report-html-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp failed for " << pattern;
    directory_ = pattern;
  }

  void TearDown() override {
    std::error_code error;
    fs::remove_all(directory_, error);
  }

  fs::path directory_;
};

// Cells of the table row whose first cell is `label`; empty when there is none.
std::vector<std::string> row_with_label(const nlohmann::json& table, const std::string& label) {
  for (const auto& row : table) {
    if (!row.empty() && row[0].get<std::string>() == label) return row.get<std::vector<std::string>>();
  }
  return {};
}

// ---------------------------------------------------------------- text helpers

TEST(EncodeBase64, Rfc4648Vectors) {
  EXPECT_EQ(encode_base64(""), "");
  EXPECT_EQ(encode_base64("f"), "Zg==");
  EXPECT_EQ(encode_base64("fo"), "Zm8=");
  EXPECT_EQ(encode_base64("foo"), "Zm9v");
  EXPECT_EQ(encode_base64("foob"), "Zm9vYg==");
  EXPECT_EQ(encode_base64("fooba"), "Zm9vYmE=");
  EXPECT_EQ(encode_base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(encode_base64(std::string("\x00\xFF\xFE", 3)), "AP/+");
  EXPECT_EQ(data_uri("image/png", "foo"), "data:image/png;base64,Zm9v");
}

TEST(EscapeHtml, MarkupCharactersBecomeReferences) {
  EXPECT_EQ(escape_html("a<b>&\"c\"'d'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
  EXPECT_EQ(escape_html("</pre><script>"), "&lt;/pre&gt;&lt;script&gt;");
}

TEST(EscapeHtml, ControlCharactersBecomeSpaces) {
  EXPECT_EQ(escape_html(std::string("a\x01" "b\x7F" "c\td\ne\r", 10)), "a b c\td\ne\r");
  EXPECT_EQ(escape_html(std::string("x\0y", 3)), "x y");
}

TEST(EscapeHtml, InvalidUtf8BecomesReplacementCharacter) {
  const std::string replacement = "\xEF\xBF\xBD";
  EXPECT_EQ(escape_html("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  EXPECT_EQ(escape_html("a\xFF" "b"), "a" + replacement + "b");
  EXPECT_EQ(escape_html("\xC3"), replacement);                       // truncated sequence
  EXPECT_EQ(escape_html("\xC0\xAF"), replacement + replacement);     // overlong '/'
  EXPECT_EQ(escape_html("\xED\xA0\x80"), replacement + replacement + replacement);  // UTF-16 surrogate
}

// ---------------------------------------------------------------- run files

TEST(ParseTrainStats, ColumnsMatchedByName) {
  const std::string text =
      "val_dice,epoch,epoch_loss,overall_loss,val_loss_epoch,val_loss_avg,train_dice,epoch_duration,"
      "optimizer_steps,total_optimizer_steps\n"
      "0.5,1,14,2,6,2,0.25,1.5,7,7\n"
      "\n"
      "nan,2,7,1,3,1,0.5,2.25,7,14\n";
  const std::vector<ReportEpochRow> rows = parse_train_stats(text, "stats.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].epoch, 1);
  EXPECT_DOUBLE_EQ(rows[0].val_dice, 0.5);
  EXPECT_DOUBLE_EQ(rows[0].epoch_loss, 14);
  EXPECT_DOUBLE_EQ(rows[0].train_dice, 0.25);
  EXPECT_EQ(rows[1].epoch, 2);
  EXPECT_TRUE(std::isnan(rows[1].val_dice));
  EXPECT_DOUBLE_EQ(rows[1].epoch_duration, 2.25);
  EXPECT_EQ(rows[1].total_optimizer_steps, 14);
  EXPECT_FALSE(rows[1].learning_rate.has_value());
}

TEST(ParseTrainStats, MissingColumnNamed) {
  try {
    parse_train_stats("epoch,epoch_loss\n1,2\n", "runs/x/train_stats.csv");
    FAIL() << "a header without overall_loss was accepted";
  } catch (const ReportError& error) {
    EXPECT_NE(std::string(error.what()).find("runs/x/train_stats.csv"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("'overall_loss'"), std::string::npos) << error.what();
  }
}

TEST(ParseTrainStats, InvalidValueNamesLineAndColumn) {
  const std::string header =
      "epoch,epoch_loss,overall_loss,val_loss_epoch,val_loss_avg,train_dice,val_dice,epoch_duration,"
      "optimizer_steps,total_optimizer_steps\n";
  try {
    parse_train_stats(header + "1,1,1,1,1,1,1,1,7,7\n2,1,1,1,1,oops,1,1,7,14\n", "stats.csv");
    FAIL() << "a non-numeric train_dice was accepted";
  } catch (const ReportError& error) {
    EXPECT_NE(std::string(error.what()).find("line 3"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("train_dice"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("'oops'"), std::string::npos) << error.what();
  }
  EXPECT_THROW(parse_train_stats(header + "1.5,1,1,1,1,1,1,1,7,7\n", "stats.csv"), ReportError);
  EXPECT_THROW(parse_train_stats(header + "1,1,1,1,1,1,1,1,7\n", "stats.csv"), ReportError);
}

TEST(FormatSummaryValue, EachFormat) {
  EXPECT_EQ(format_summary_value("12.3456", SummaryFormat::kSeconds), "12.35");
  EXPECT_EQ(format_summary_value("0.91234", SummaryFormat::kDice), "0.9123");
  EXPECT_EQ(format_summary_value("4.567", SummaryFormat::kRate), "4.57");
  EXPECT_EQ(format_summary_value("0.12346", SummaryFormat::kStepSeconds), "0.1235");
  EXPECT_EQ(format_summary_value("0.95", SummaryFormat::kNumber), "0.95");
  EXPECT_EQ(format_summary_value("5423043", SummaryFormat::kInteger), "5423043");
  EXPECT_EQ(format_summary_value("3.0", SummaryFormat::kInteger), "3");
  EXPECT_EQ(format_summary_value("true", SummaryFormat::kYesNo), "yes");
  EXPECT_EQ(format_summary_value("false", SummaryFormat::kYesNo), "no");
  EXPECT_EQ(format_summary_value("\"vm-7\"", SummaryFormat::kText), "vm-7");
  EXPECT_EQ(format_summary_value("null", SummaryFormat::kDice), "n/a");
  EXPECT_EQ(format_summary_value("\"fast\"", SummaryFormat::kSeconds), "fast");
}

TEST_F(ReportHtml, RunFilesRead) {
  const fs::path run = directory_ / "run_a";
  write_synthetic_run(run, {});
  const RunReport report = read_run_report(run);

  EXPECT_EQ(report.name, "run_a");
  EXPECT_TRUE(report.warnings.empty()) << report.warnings.front();
  EXPECT_EQ(report.value("figure_of_merit_s"), "12.35");
  EXPECT_EQ(report.value("converged"), "yes");
  EXPECT_EQ(report.value("epochs"), "3");
  EXPECT_EQ(report.value("device"), "n/a");
  ASSERT_TRUE(report.target_dice.has_value());
  EXPECT_DOUBLE_EQ(*report.target_dice, 0.9);
  EXPECT_EQ(report.config_yaml, kConfigText);

  ASSERT_EQ(report.epochs.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(report.epochs[i].epoch, static_cast<int>(i) + 1);
    ASSERT_TRUE(report.epochs[i].learning_rate.has_value());
    EXPECT_DOUBLE_EQ(*report.epochs[i].learning_rate, 0.001 / static_cast<double>(i + 1));
  }

  std::vector<std::string> figure_names;
  for (const ReportFile& figure : report.figures) figure_names.push_back(figure.name);
  EXPECT_EQ(figure_names, run_figure_names());

  const SliceImageLayout layout = slice_image_layout({kImageEdge, kImageEdge, kImageEdge}, true);
  std::vector<std::string> image_names;
  for (const ReportFile& image : report.images) {
    image_names.push_back(image.name);
    EXPECT_EQ(image.width_px, layout.width_px) << image.name;
    EXPECT_EQ(image.height_px, layout.height_px) << image.name;
  }
  EXPECT_EQ(image_names, (std::vector<std::string>{"val_2.png", "val_3.png", "val_10.png"}));
}

TEST_F(ReportHtml, MissingFilesBecomeWarnings) {
  const fs::path run = directory_ / "unfinished";
  fs::create_directories(run / "images");
  write_file_atomic(run / "config.yaml", std::string_view("target_dice: 0.8\n"));
  write_file_atomic(run / "images" / "val_1.png", std::string_view("not a png"));

  const RunReport report = read_run_report(run);
  std::string warnings;
  for (const std::string& warning : report.warnings) warnings += warning + "\n";
  EXPECT_NE(warnings.find("result.json is missing"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("train_stats.csv is missing"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("figures/ is missing"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("val_1.png is not a PNG image"), std::string::npos) << warnings;
  EXPECT_TRUE(report.images.empty());
  EXPECT_EQ(report.value("figure_of_merit_s"), "n/a");
  ASSERT_TRUE(report.target_dice.has_value());
  EXPECT_DOUBLE_EQ(*report.target_dice, 0.8);

  // The page of such a run still builds and lists the warnings.
  const std::string page = build_report_html({report});
  EXPECT_NE(page.find("result.json is missing"), std::string::npos);
}

TEST_F(ReportHtml, NotARunDirectoryRejected) {
  EXPECT_THROW(read_run_report(directory_ / "nowhere"), ReportError);
  fs::create_directories(directory_ / "empty");
  try {
    read_run_report(directory_ / "empty");
    FAIL() << "a directory without run files was accepted";
  } catch (const ReportError& error) {
    EXPECT_NE(std::string(error.what()).find("not a benchmark run directory"), std::string::npos) << error.what();
  }
}

TEST_F(ReportHtml, SummaryTableOneRowPerRun) {
  SyntheticRun second;
  second.figure_of_merit_s = 100;
  second.final_val_dice = 0.5;
  second.host = "node-2";
  write_synthetic_run(directory_ / "run_a", {});
  write_synthetic_run(directory_ / "run_b", second);
  const std::string table =
      format_summary_table({read_run_report(directory_ / "run_a"), read_run_report(directory_ / "run_b")});

  // Columns are separated by at least two spaces.
  std::vector<std::vector<std::string>> rows;
  std::istringstream lines(table);
  for (std::string line; std::getline(lines, line);) {
    const std::regex separator("  +");
    rows.emplace_back(std::sregex_token_iterator(line.begin(), line.end(), separator, -1),
                      std::sregex_token_iterator());
  }
  ASSERT_EQ(rows.size(), 3u) << table;
  EXPECT_EQ(rows[0], (std::vector<std::string>{"run", "FOM (s)", "converged", "epochs", "final Dice", "samples/s",
                                               "median step (s)", "host", "scaffold", "commit", "LibTorch"}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"run_a", "12.35", "yes", "3", "0.9123", "4.57", "0.1235", "node-1",
                                               "0.1.0", "abc1234", "1.13.0"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"run_b", "100.00", "yes", "3", "0.5000", "4.57", "0.1235", "node-2",
                                               "0.1.0", "abc1234", "1.13.0"}));
}

// ---------------------------------------------------------------- the page

TEST_F(ReportHtml, SingleRunPageParsesAndEmbedsEverything) {
  if (!python_available()) GTEST_SKIP() << scaffold_test::kPython << " is missing, so the page cannot be parsed";
  SyntheticRun spec;
  spec.host = kOddHost;
  const fs::path run = directory_ / "run_a";
  write_synthetic_run(run, spec);
  const fs::path page = run / "report.html";
  write_report_html(page, {read_run_report(run)});

  const nlohmann::json parsed = check_html(page, directory_);
  ASSERT_FALSE(parsed.is_null());
  EXPECT_EQ(parsed["errors"], nlohmann::json::array()) << parsed["errors"].dump(2);
  EXPECT_EQ(parsed["doctype"], "DOCTYPE html");
  const std::set<std::string> tags = parsed["tags"].get<std::set<std::string>>();
  for (const char* forbidden : {"script", "link", "iframe", "object", "embed", "svg"}) {
    EXPECT_EQ(tags.count(forbidden), 0u) << "the page contains <" << forbidden << ">";
  }

  // Every figure, then every image in numeric order, byte for byte.
  const nlohmann::json& images = parsed["images"];
  const std::vector<std::string> figures = run_figure_names();
  const std::vector<std::string> pngs = {"val_2.png", "val_3.png", "val_10.png"};
  ASSERT_EQ(images.size(), figures.size() + pngs.size()) << images.dump(2);
  for (std::size_t i = 0; i < figures.size(); ++i) {
    EXPECT_EQ(images[i]["alt"], figures[i]);
    EXPECT_EQ(images[i]["media_type"], "image/svg+xml");
    EXPECT_EQ(images[i]["sha256"], sha256_hex(read_file(run / "figures" / figures[i]))) << figures[i];
  }
  const SliceImageLayout layout = slice_image_layout({kImageEdge, kImageEdge, kImageEdge}, true);
  for (std::size_t i = 0; i < pngs.size(); ++i) {
    const nlohmann::json& image = images[figures.size() + i];
    EXPECT_EQ(image["alt"], pngs[i]);
    EXPECT_EQ(image["media_type"], "image/png");
    EXPECT_EQ(image["sha256"], sha256_hex(read_file(run / "images" / pngs[i]))) << pngs[i];
    EXPECT_EQ(image["width"], std::to_string(layout.width_px));
    EXPECT_EQ(image["height"], std::to_string(layout.height_px));
  }

  // The per-epoch table: a header and one row per train_stats.csv row.
  const nlohmann::json& epochs = parsed["tables"]["epochs-1"];
  ASSERT_EQ(epochs.size(), 4u) << epochs.dump(2);
  EXPECT_EQ(epochs[0][0], "epoch");
  EXPECT_EQ(epochs[0][7], "val_dice");
  EXPECT_EQ(epochs[1], (std::vector<std::string>{"1", "0.001", "14", "2", "6", "2", "0.2500", "0.5000", "1.500", "7",
                                                 "7"}));
  EXPECT_EQ(epochs[2][1], "0.0005");
  EXPECT_EQ(epochs[2][7], "0.7500");
  EXPECT_EQ(epochs[3][0], "3");
  EXPECT_EQ(epochs[3][3], "0.5");
  EXPECT_EQ(epochs[3][7], "0.9123");
  EXPECT_EQ(epochs[3][10], "21");

  // Summary values, and text from files that reads back unchanged after escaping.
  const nlohmann::json& summary = parsed["tables"]["summary-1"];
  EXPECT_EQ(row_with_label(summary, "Figure of merit (s)"), (std::vector<std::string>{"Figure of merit (s)", "12.35"}));
  EXPECT_EQ(row_with_label(summary, "Final validation Dice"),
            (std::vector<std::string>{"Final validation Dice", "0.9123"}));
  EXPECT_EQ(row_with_label(summary, "Host"), (std::vector<std::string>{"Host", kOddHost}));
  EXPECT_EQ(parsed["texts"]["config-1"], kConfigTextAsParsed);
}

TEST_F(ReportHtml, EmbeddedImageShowsMarkedVoxel) {
  if (!python_available()) GTEST_SKIP() << scaffold_test::kPython << " is missing, so the page cannot be parsed";
  const fs::path run = directory_ / "run_a";
  write_synthetic_run(run, {});
  const fs::path page = directory_ / "page.html";
  write_report_html(page, {read_run_report(run)});
  const nlohmann::json parsed = check_html(page, directory_);
  ASSERT_FALSE(parsed.is_null());

  // The page contains the file's exact bytes, so decoding the file shows what the page shows.
  const std::string png = read_file(run / "images" / "val_3.png");
  bool embedded = false;
  for (const auto& image : parsed["images"]) embedded = embedded || image["sha256"] == sha256_hex(png);
  EXPECT_TRUE(embedded);

  int width = 0;
  int height = 0;
  int channels = 0;
  stbi_uc* pixels = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(png.data()), static_cast<int>(png.size()),
                                          &width, &height, &channels, 3);
  ASSERT_NE(pixels, nullptr) << stbi_failure_reason();
  const SliceImageLayout layout = slice_image_layout({kImageEdge, kImageEdge, kImageEdge}, true);
  ASSERT_EQ(width, layout.width_px);
  ASSERT_EQ(height, layout.height_px);
  const auto pixel = [&](PixelPosition at) {
    const stbi_uc* p = pixels + (static_cast<std::size_t>(at.y) * width + at.x) * 3;
    return Rgb{p[0], p[1], p[2]};
  };

  // The depth slice row shows the marked voxel at (h, w); its neighbour is background.
  const auto at = [&](PanelColumn column, int h, int w) {
    return pixel(layout.voxel_pixel(PanelRow::kSliceDepth, column, h, w));
  };
  EXPECT_EQ(at(PanelColumn::kTrueMask, kMarkedHeight, kMarkedWidth), class_colour(kMarkedTrueClass));
  EXPECT_EQ(at(PanelColumn::kPredictedMask, kMarkedHeight, kMarkedWidth), class_colour(kMarkedPredictedClass));
  EXPECT_EQ(at(PanelColumn::kTrueMask, kMarkedHeight, kMarkedWidth + 1), (Rgb{0, 0, 0}));
  EXPECT_EQ(at(PanelColumn::kVolume, kMarkedHeight, kMarkedWidth), (Rgb{0, 0, 0}));
  // The depth projection shows it too, at the same (h, w).
  EXPECT_EQ(pixel(layout.voxel_pixel(PanelRow::kProjectionDepth, PanelColumn::kTrueMask, kMarkedHeight, kMarkedWidth)),
            class_colour(kMarkedTrueClass));
  stbi_image_free(pixels);
}

TEST_F(ReportHtml, TwoRunsGiveComparison) {
  if (!python_available()) GTEST_SKIP() << scaffold_test::kPython << " is missing, so the page cannot be parsed";
  SyntheticRun second;
  second.figure_of_merit_s = 100;
  second.val_dice = {0.25, 0.5};
  write_synthetic_run(directory_ / "run_a", {});
  write_synthetic_run(directory_ / "run_b", second);
  const fs::path page = directory_ / "compare.html";
  write_report_html(page, {read_run_report(directory_ / "run_a"), read_run_report(directory_ / "run_b")});

  const nlohmann::json parsed = check_html(page, directory_);
  ASSERT_FALSE(parsed.is_null());
  EXPECT_EQ(parsed["errors"], nlohmann::json::array()) << parsed["errors"].dump(2);

  // One column per run in the comparison table.
  const nlohmann::json& table = parsed["tables"]["comparison-table"];
  ASSERT_FALSE(table.empty());
  EXPECT_EQ(table[0].size(), 3u) << table[0].dump();
  EXPECT_EQ(row_with_label(table, "Figure of merit (s)"),
            (std::vector<std::string>{"Figure of merit (s)", "12.35", "100.00"}));
  EXPECT_EQ(row_with_label(table, "Epochs"), (std::vector<std::string>{"Epochs", "3", "2"}));

  // Five overlaid charts with one line per run, then each run's figures side by side.
  const nlohmann::json& images = parsed["images"];
  const std::vector<std::string> curves = {"Validation Dice", "Training loss", "Validation loss", "Learning rate",
                                           "Epoch time"};
  ASSERT_GE(images.size(), curves.size() + 10);
  for (std::size_t i = 0; i < curves.size(); ++i) {
    EXPECT_EQ(images[i]["alt"], curves[i]);
    EXPECT_EQ(images[i]["polylines"], 2) << curves[i];
  }
  const nlohmann::json& side_by_side = parsed["tables"]["side-by-side"];
  const std::vector<std::string> figures = run_figure_names();
  ASSERT_EQ(side_by_side.size(), 1 + figures.size()) << side_by_side.dump(2);
  for (std::size_t i = 0; i < figures.size(); ++i) {
    const std::string& name = figures[i];
    EXPECT_EQ(images[curves.size() + 2 * i]["alt"], "run_a: " + name);
    EXPECT_EQ(images[curves.size() + 2 * i]["sha256"], sha256_hex(read_file(directory_ / "run_a/figures" / name)));
    EXPECT_EQ(images[curves.size() + 2 * i + 1]["alt"], "run_b: " + name);
    EXPECT_EQ(images[curves.size() + 2 * i + 1]["sha256"], sha256_hex(read_file(directory_ / "run_b/figures" / name)));
  }

  // Each run keeps its own per-epoch table.
  EXPECT_EQ(parsed["tables"]["epochs-1"].size(), 4u);
  EXPECT_EQ(parsed["tables"]["epochs-2"].size(), 3u);
}

TEST_F(ReportHtml, PageWrittenAtomically) {
  write_synthetic_run(directory_ / "run_a", {});
  const fs::path page = directory_ / "out" / "report.html";
  fs::create_directories(page.parent_path());
  write_file_atomic(page, std::string_view("old page"));
  write_report_html(page, {read_run_report(directory_ / "run_a")});
  EXPECT_EQ(read_file(page).rfind("<!DOCTYPE html>", 0), 0u);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(page.parent_path())) names.push_back(entry.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"report.html"});
  EXPECT_THROW(build_report_html({}), std::invalid_argument);
}

// ---------------------------------------------------------------- headless Chromium

// Path of Debian's chromium binary on PATH, or empty.
std::string find_chromium() {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path candidate = fs::path(dir) / "chromium";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

struct BrowserRun {
  CommandResult command;
  std::vector<std::string> console_lines;  // console messages that Chromium logged
};

// Loads `page` in headless Chromium with console logging on stderr and takes a
// screenshot. Every network lookup is mapped to "not found", and background
// services are off, so the browser contacts no host.
BrowserRun load_in_chromium(const std::string& chromium, const fs::path& page, const fs::path& screenshot,
                            const fs::path& work_dir) {
  std::string command = "timeout 60 '" + chromium + "' --headless=new --disable-gpu --hide-scrollbars --no-first-run";
  if (::geteuid() == 0) command += " --no-sandbox";  // Chromium refuses to start its sandbox as root
  command += " --disable-background-networking --disable-component-update --disable-sync --disable-extensions"
             " --disable-default-apps --host-resolver-rules='MAP * ~NOTFOUND'"
             " --user-data-dir='" + (work_dir / "chromium-profile").string() + "'"
             " --enable-logging=stderr --v=0 --window-size=1400,1600"
             " --screenshot='" + screenshot.string() + "' 'file://" + fs::absolute(page).string() + "'";

  BrowserRun run;
  run.command = run_in(work_dir, command);
  // Console messages read "...:INFO:CONSOLE:12] "message", source: ..." (Chromium 156)
  // or "...:INFO:CONSOLE(12)] ..." (older releases).
  const std::regex console(R"(:CONSOLE[:(])");
  std::istringstream lines(run.command.output);
  for (std::string line; std::getline(lines, line);) {
    if (std::regex_search(line, console)) run.console_lines.push_back(line);
  }
  return run;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& line : lines) text += line + "\n";
  return text;
}

class ReportBrowser : public ReportHtml {
 protected:
  void SetUp() override {
    chromium_ = find_chromium();
    if (chromium_.empty()) {
      GTEST_SKIP() << "chromium is not installed, so the page is not rendered; install the Debian package chromium "
                      "(scripts/install_deps.sh does)";
    }
    ReportHtml::SetUp();
  }

  std::string chromium_;
};

TEST_F(ReportBrowser, PageRendersFiguresWithoutConsoleMessages) {
  write_synthetic_run(directory_ / "run_a", {});
  const fs::path page = directory_ / "report.html";
  write_report_html(page, {read_run_report(directory_ / "run_a")});

  const fs::path screenshot = directory_ / "screenshot.png";
  const BrowserRun run = load_in_chromium(chromium_, page, screenshot, directory_);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  EXPECT_TRUE(run.console_lines.empty()) << join_lines(run.console_lines);

  int width = 0;
  int height = 0;
  int channels = 0;
  stbi_uc* pixels = stbi_load(screenshot.c_str(), &width, &height, &channels, 3);
  ASSERT_NE(pixels, nullptr) << screenshot << ": " << stbi_failure_reason() << "\n" << run.command.output;
  EXPECT_EQ(width, 1400);
  EXPECT_EQ(height, 1600);

  // The figures' first series colour, #1f5fbf, must be on screen, among many
  // other colours (text, tables, axes), and the page must not be mostly blank.
  std::set<std::uint32_t> colours;
  std::size_t line_pixels = 0;
  std::size_t non_white = 0;
  for (std::size_t i = 0; i < static_cast<std::size_t>(width) * height; ++i) {
    const stbi_uc r = pixels[3 * i];
    const stbi_uc g = pixels[3 * i + 1];
    const stbi_uc b = pixels[3 * i + 2];
    colours.insert((std::uint32_t{r} << 16) | (std::uint32_t{g} << 8) | b);
    line_pixels += std::abs(r - 0x1f) <= 8 && std::abs(g - 0x5f) <= 8 && std::abs(b - 0xbf) <= 8;
    non_white += r < 250 || g < 250 || b < 250;
  }
  stbi_image_free(pixels);
  EXPECT_GT(line_pixels, 200u) << "the plot line colour #1f5fbf is missing from the screenshot";
  EXPECT_GT(colours.size(), 50u);
  EXPECT_GT(non_white, static_cast<std::size_t>(width) * height / 20);
}

TEST_F(ReportBrowser, ScriptErrorIsDetected) {
  // The detector itself: an uncaught exception on a page without our policy.
  const fs::path page = directory_ / "broken.html";
  write_file_atomic(page, std::string_view("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>broken</title>"
                                           "</head><body><p>broken</p><script>undefined_function();</script>"
                                           "</body></html>\n"));
  const BrowserRun run = load_in_chromium(chromium_, page, directory_ / "broken.png", directory_);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  ASSERT_FALSE(run.console_lines.empty()) << run.command.output;
  EXPECT_NE(join_lines(run.console_lines).find("undefined_function"), std::string::npos)
      << join_lines(run.console_lines);
}

TEST_F(ReportBrowser, ExternalResourceIsBlockedAndDetected) {
  // A report page with an injected reference to another host: the page's
  // Content-Security-Policy blocks it and Chromium reports the violation.
  write_synthetic_run(directory_ / "run_a", {});
  std::string html = build_report_html({read_run_report(directory_ / "run_a")});
  const std::size_t body_end = html.find("</body>");
  ASSERT_NE(body_end, std::string::npos);
  html.insert(body_end, "<img src=\"https://example.invalid/pixel.png\" alt=\"external\">\n");
  const fs::path page = directory_ / "external.html";
  write_file_atomic(page, html);

  const BrowserRun run = load_in_chromium(chromium_, page, directory_ / "external.png", directory_);
  ASSERT_EQ(run.command.exit_code, 0) << run.command.output;
  ASSERT_FALSE(run.console_lines.empty()) << run.command.output;
  EXPECT_NE(join_lines(run.console_lines).find("Content Security Policy"), std::string::npos)
      << join_lines(run.console_lines);
}

}  // namespace
}  // namespace scaffold
