// Tests for the report writers. Ticks are checked on hand-worked ranges. SVG
// charts go through an external XML parser, and their points are compared with
// pixel positions computed here from the axis limits. The run figures are read
// back from disk, and PNG slice images are decoded back to pixels.
#include <gtest/gtest.h>
#include <stb/stb_image.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/atomic_file.hpp"
#include "report/run_figures.hpp"
#include "report/slice_images.hpp"
#include "report/svg_plot.hpp"

namespace scaffold {
namespace {

namespace fs = std::filesystem;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// SVG coordinates are printed with two decimals.
constexpr double kPixelTolerance = 0.006;

const char* const kPython = "/usr/bin/python3";

using Point = std::pair<double, double>;

class ReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "scaffold-report-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp failed for " << pattern;
    directory_ = pattern;
  }

  void TearDown() override {
    std::error_code error;
    fs::remove_all(directory_, error);
  }

  // Runs Python's xml.dom.minidom on the file and returns its exit status (0 = well-formed).
  static int parse_xml_file(const fs::path& path) {
    const std::string command = std::string(kPython) +
                                " -c \"import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])\" '" +
                                path.string() + "' 2>/dev/null";
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  // Writes `svg` to a file and expects the XML parser to accept it.
  void expect_well_formed(const std::string& svg, const std::string& name) {
    const fs::path path = directory_ / name;
    write_file_atomic(path, svg);
    EXPECT_EQ(parse_xml_file(path), 0) << path << " is not well-formed XML:\n" << svg;
  }

  fs::path directory_;
};

bool python_available() { return ::access(kPython, X_OK) == 0; }

std::vector<std::string> all_matches(const std::string& text, const std::string& pattern) {
  const std::regex expression(pattern);
  std::vector<std::string> matches;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), expression); it != std::sregex_iterator(); ++it) {
    matches.push_back((*it)[1].str());
  }
  return matches;
}

// The point lists of every <polyline> in document order.
std::vector<std::vector<Point>> polylines(const std::string& svg) {
  std::vector<std::vector<Point>> lines;
  for (const std::string& points : all_matches(svg, R"re(<polyline[^>]*points="([^"]*)")re")) {
    std::vector<Point> line;
    for (const std::string& pair : all_matches(points, R"re(([-0-9.]+,[-0-9.]+))re")) {
      const std::size_t comma = pair.find(',');
      line.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
    }
    lines.push_back(line);
  }
  return lines;
}

std::vector<Point> circle_centres(const std::string& svg) {
  std::vector<Point> centres;
  const std::regex expression(R"re(<circle cx="([-0-9.]+)" cy="([-0-9.]+)")re");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), expression); it != std::sregex_iterator(); ++it) {
    centres.emplace_back(std::stod((*it)[1].str()), std::stod((*it)[2].str()));
  }
  return centres;
}

// Pixel position of a data value on a linear axis spanning [low, high].
double linear_x(const PlotArea& area, double x, double low, double high) {
  return area.left + (x - low) / (high - low) * area.width;
}

double linear_y(const PlotArea& area, double y, double low, double high) {
  return area.top + area.height - (y - low) / (high - low) * area.height;
}

double log_y(const PlotArea& area, double y, double low, double high) {
  const double fraction = (std::log10(y) - std::log10(low)) / (std::log10(high) - std::log10(low));
  return area.top + area.height - fraction * area.height;
}

void expect_ticks(const std::vector<double>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_DOUBLE_EQ(actual[i], expected[i]) << "tick " << i;
}

// ---------------------------------------------------------------- ticks

TEST(LinearTicks, UnitRangeStepsByPointTwo) {
  expect_ticks(linear_ticks(0, 1), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
}

TEST(LinearTicks, EncloseRangeWithNiceStep) {
  expect_ticks(linear_ticks(0.013, 0.97), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  expect_ticks(linear_ticks(1, 10), {0, 2, 4, 6, 8, 10});
  expect_ticks(linear_ticks(-3, 7), {-4, -2, 0, 2, 4, 6, 8});
  expect_ticks(linear_ticks(0, 37), {0, 10, 20, 30, 40});
  expect_ticks(linear_ticks(100, 250), {100, 150, 200, 250});
  expect_ticks(linear_ticks(1e-4, 1e-3), {0, 2e-4, 4e-4, 6e-4, 8e-4, 1e-3});
}

TEST(LinearTicks, ConstantRangeIsWidened) {
  expect_ticks(linear_ticks(1, 1), {0.9, 0.95, 1.0, 1.05, 1.1});
  expect_ticks(linear_ticks(0, 0), {-1, -0.5, 0, 0.5, 1});
}

TEST(LinearTicks, IntegerStepsForCounts) {
  expect_ticks(linear_ticks(1, 3), {1, 1.5, 2, 2.5, 3});
  expect_ticks(linear_ticks(1, 3, true), {1, 2, 3});
  expect_ticks(linear_ticks(1, 1, true), {0, 1, 2});
  expect_ticks(linear_ticks(0, 37, true), {0, 10, 20, 30, 40});
}

TEST(LinearTicks, InvalidRangeRejected) {
  EXPECT_THROW(linear_ticks(kNaN, 1), std::invalid_argument);
  EXPECT_THROW(linear_ticks(2, 1), std::invalid_argument);
  EXPECT_THROW(linear_ticks(0, std::numeric_limits<double>::infinity()), std::invalid_argument);
  EXPECT_THROW(linear_ticks(-1e308, 1e308), std::invalid_argument);
}

TEST(LogTicks, DecadesAroundRange) {
  expect_ticks(log_ticks(0.013, 0.97), {0.01, 0.1, 1});
  expect_ticks(log_ticks(1, 1000), {1, 10, 100, 1000});
  expect_ticks(log_ticks(0.5, 0.5), {0.1, 1});
  expect_ticks(log_ticks(1, 1), {0.1, 1, 10});
}

TEST(LogTicks, WideRangeLabelsEveryOtherDecade) {
  expect_ticks(log_ticks(1e-8, 1e4), {1e-8, 1e-6, 1e-4, 1e-2, 1, 1e2, 1e4});
}

TEST(LogTicks, NonPositiveBoundRejected) {
  EXPECT_THROW(log_ticks(0, 1), std::invalid_argument);
  EXPECT_THROW(log_ticks(-1, 1), std::invalid_argument);
  EXPECT_THROW(log_ticks(1, kNaN), std::invalid_argument);
}

TEST(TickLabels, LinearDecimalsFollowStep) {
  EXPECT_EQ(format_linear_tick(0.2, 0.2), "0.2");
  EXPECT_EQ(format_linear_tick(1.0, 0.2), "1.0");
  EXPECT_EQ(format_linear_tick(0.0, 0.2), "0.0");
  EXPECT_EQ(format_linear_tick(-0.0, 0.5), "0.0");
  EXPECT_EQ(format_linear_tick(15, 5), "15");
  EXPECT_EQ(format_linear_tick(0.0006, 0.0002), "0.0006");
  EXPECT_EQ(format_linear_tick(2e6, 1e6), "2e+06");
}

TEST(TickLabels, LogPlainNearOneElseExponent) {
  EXPECT_EQ(format_log_tick(0.001), "0.001");
  EXPECT_EQ(format_log_tick(0.01), "0.01");
  EXPECT_EQ(format_log_tick(1), "1");
  EXPECT_EQ(format_log_tick(1000), "1000");
  EXPECT_EQ(format_log_tick(1e-5), "1e-5");
  EXPECT_EQ(format_log_tick(1e6), "1e6");
}

TEST(EscapeXml, EntitiesAndControlCharacters) {
  EXPECT_EQ(escape_xml("a<b & \"c\" 'd' >"), "a&lt;b &amp; &quot;c&quot; &apos;d&apos; &gt;");
  EXPECT_EQ(escape_xml(std::string("x\x01y\tz", 5)), "x y\tz");
}

// ---------------------------------------------------------------- SVG charts

TEST_F(ReportTest, XmlCheckRejectsMalformedDocument) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const fs::path path = directory_ / "broken.svg";
  write_file_atomic(path, std::string("<svg><g></svg>"));
  EXPECT_NE(parse_xml_file(path), 0);
}

TEST_F(ReportTest, LinePlotMapsPointsThroughAxes) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series series{"dice", {1, 2, 3, 4, 5}, {0.1, 0.3, 0.5, 0.7, 0.9}, ""};
  PlotSpec spec;
  spec.title = "Dice & <loss>";
  spec.x_label = "Epoch";
  spec.y_label = "Value";
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "linear.svg");

  // x: [1, 5] in five intervals gives step 1, so the axis is [1, 5].
  // y: [0.1, 0.9] gives step 0.2, so the axis is [0, 1].
  const PlotArea area = plot_area(spec, {series});
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].size(), 5u);
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_NEAR(lines[0][i].first, linear_x(area, series.x[i], 1, 5), kPixelTolerance) << "point " << i;
    EXPECT_NEAR(lines[0][i].second, linear_y(area, series.y[i], 0, 1), kPixelTolerance) << "point " << i;
  }

  EXPECT_EQ(circle_centres(svg).size(), 5u);
  EXPECT_NE(svg.find(">Dice &amp; &lt;loss&gt;</text>"), std::string::npos);
  EXPECT_NE(svg.find("<title>Dice &amp; &lt;loss&gt;</title>"), std::string::npos);
  EXPECT_NE(svg.find(">Epoch</text>"), std::string::npos);
  for (const char* label : {">0.0</text>", ">0.4</text>", ">1.0</text>"}) {
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  }
  EXPECT_EQ(svg.find("class=\"legend\""), std::string::npos);
  EXPECT_EQ(svg.find("class=\"note\""), std::string::npos);
}

TEST_F(ReportTest, LogAxisSkipsNonPositiveValues) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series series{"loss", {1, 2, 3, 4, 5}, {1.0, 0.2, 0.0, 0.05, 0.013}, ""};
  PlotSpec spec;
  spec.title = "loss";
  spec.log_y = true;
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "log.svg");

  // y: [0.013, 1] spans the decades 0.01 to 1, and the zero splits the line in two.
  const PlotArea area = plot_area(spec, {series});
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 2u);
  ASSERT_EQ(lines[0].size(), 2u);
  ASSERT_EQ(lines[1].size(), 2u);
  EXPECT_NEAR(lines[0][1].second, log_y(area, 0.2, 0.01, 1), kPixelTolerance);
  EXPECT_NEAR(lines[1][0].second, log_y(area, 0.05, 0.01, 1), kPixelTolerance);
  EXPECT_NEAR(lines[1][1].first, linear_x(area, 5, 1, 5), kPixelTolerance);

  EXPECT_NE(svg.find("1 value &lt;= 0 not shown on the log axis"), std::string::npos);
  for (const char* label : {">0.01</text>", ">0.1</text>", ">1</text>"}) {
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  }
}

TEST_F(ReportTest, NanSplitsLineAndMarksIsolatedPoint) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  // 40 points are too many for markers, except on the point cut off by the NaN.
  Series series{"loss", {}, {}, ""};
  for (int i = 0; i < 40; ++i) {
    series.x.push_back(i);
    series.y.push_back(i == 1 ? kNaN : 0.1 + 0.01 * i);
  }
  PlotSpec spec;
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "gap.svg");

  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].size(), 38u);

  // x: [0, 39] gives step 10 and axis [0, 40]. y: [0.1, 0.49] gives step 0.1 and axis [0.1, 0.5].
  const PlotArea area = plot_area(spec, {series});
  const auto circles = circle_centres(svg);
  ASSERT_EQ(circles.size(), 1u);
  EXPECT_NEAR(circles[0].first, linear_x(area, 0, 0, 40), kPixelTolerance);
  EXPECT_NEAR(circles[0].second, linear_y(area, 0.1, 0.1, 0.5), kPixelTolerance);
}

TEST_F(ReportTest, SinglePointSitsInCentre) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series series{"dice", {3}, {0.42}, ""};
  PlotSpec spec;
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "single.svg");

  // Both ranges are widened by 10% of the value and rounded out to ticks that
  // are symmetric about it: x [2.6, 3.4], y [0.36, 0.48].
  const PlotArea area = plot_area(spec, {series});
  EXPECT_TRUE(polylines(svg).empty());
  const auto circles = circle_centres(svg);
  ASSERT_EQ(circles.size(), 1u);
  EXPECT_NEAR(circles[0].first, area.left + area.width / 2, kPixelTolerance);
  EXPECT_NEAR(circles[0].second, area.top + area.height / 2, kPixelTolerance);
}

TEST_F(ReportTest, ConstantSeriesDrawnAtMidHeight) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series series{"lr", {1, 2, 3, 4}, {1, 1, 1, 1}, ""};
  PlotSpec spec;
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "constant.svg");

  const PlotArea area = plot_area(spec, {series});
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].size(), 4u);
  for (const Point& point : lines[0]) EXPECT_NEAR(point.second, area.top + area.height / 2, kPixelTolerance);
  EXPECT_NE(svg.find(">0.95</text>"), std::string::npos);
  EXPECT_NE(svg.find(">1.05</text>"), std::string::npos);
}

TEST_F(ReportTest, HorizontalLineDashedAndLabelled) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series series{"dice", {1, 2, 3, 4}, {0.3, 0.5, 0.7, 0.9}, ""};
  PlotSpec spec;
  spec.horizontal_line = 0.95;
  spec.horizontal_line_label = "target 0.95";
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "target.svg");

  // y: [0.3, 0.95] gives step 0.2, axis [0.2, 1.0].
  const PlotArea area = plot_area(spec, {series});
  const std::regex line_pattern(
      R"re(<g class="reference-line">\s*<line x1="([-0-9.]+)" y1="([-0-9.]+)" x2="([-0-9.]+)" y2="([-0-9.]+)"[^>]*stroke-dasharray)re");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(svg, match, line_pattern)) << svg;
  const double expected_y = linear_y(area, 0.95, 0.2, 1.0);
  EXPECT_NEAR(std::stod(match[2].str()), expected_y, kPixelTolerance);
  EXPECT_NEAR(std::stod(match[4].str()), expected_y, kPixelTolerance);
  EXPECT_NEAR(std::stod(match[1].str()), area.left, kPixelTolerance);
  EXPECT_NEAR(std::stod(match[3].str()), area.left + area.width, kPixelTolerance);
  EXPECT_NE(svg.find(">target 0.95</text>"), std::string::npos);
}

TEST_F(ReportTest, HorizontalLineBelowLogAxisNoted) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series series{"loss", {1, 2}, {0.5, 0.25}, ""};
  PlotSpec spec;
  spec.log_y = true;
  spec.horizontal_line = 0.0;
  const std::string svg = render_line_plot(spec, {series});
  expect_well_formed(svg, "log-target.svg");

  EXPECT_EQ(svg.find("class=\"reference-line\""), std::string::npos);
  EXPECT_NE(svg.find("reference line at 0 cannot be shown on this axis"), std::string::npos);
}

TEST_F(ReportTest, LegendListsSeveralSeries) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const Series train{"train", {1, 2, 3}, {0.9, 0.5, 0.3}, "#123456"};
  const Series validation{"validation <held out>", {1, 2, 3}, {1.0, 0.6, 0.4}, ""};
  PlotSpec spec;
  const std::string svg = render_line_plot(spec, {train, validation});
  expect_well_formed(svg, "legend.svg");

  EXPECT_NE(svg.find("class=\"legend\""), std::string::npos);
  EXPECT_NE(svg.find(">train</text>"), std::string::npos);
  EXPECT_NE(svg.find(">validation &lt;held out&gt;</text>"), std::string::npos);
  EXPECT_NE(svg.find("stroke=\"#123456\""), std::string::npos);
  EXPECT_EQ(polylines(svg).size(), 2u);
  EXPECT_LT(plot_area(spec, {train, validation}).width, plot_area(spec, {train}).width);
}

TEST_F(ReportTest, EmptyChartStillWellFormed) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  PlotSpec spec;
  spec.title = std::string("bell\x07 title");
  spec.log_y = true;
  const std::string svg = render_line_plot(spec, {Series{"empty", {}, {}, ""}});
  expect_well_formed(svg, "empty.svg");
  EXPECT_NE(svg.find("no data points to show"), std::string::npos);
  EXPECT_TRUE(polylines(svg).empty());
}

TEST(LinePlot, MismatchedLengthsNameSeries) {
  try {
    render_line_plot(PlotSpec{}, {Series{"val_dice", {1, 2, 3}, {0.5, 0.6}, ""}});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("\"val_dice\""), std::string::npos) << message;
    EXPECT_NE(message.find("3 x values but 2 y values"), std::string::npos) << message;
  }
}

TEST(LinePlot, TinySizeRejected) {
  PlotSpec spec;
  spec.width = 100;
  EXPECT_THROW(render_line_plot(spec, {}), std::invalid_argument);
}

// ---------------------------------------------------------------- run figures

std::vector<EpochFigureRow> sample_rows(int count) {
  const std::vector<double> losses = {2.0, 1.0, 0.5, 0.25, 0.12, 0.06, 0.03};
  std::vector<EpochFigureRow> rows;
  for (int i = 0; i < count; ++i) {
    EpochFigureRow row;
    row.epoch = i + 1;
    row.overall_loss = losses[i];
    row.val_loss_avg = losses[i] * 1.1;
    row.val_dice = 0.3 + 0.1 * i;
    row.learning_rate = i == 2 ? kNaN : 1e-3 / (i + 1);
    row.epoch_duration_s = 3.0 + 0.1 * i;
    rows.push_back(row);
  }
  return rows;
}

TEST(FigureTitle, MatchesReferenceSuffix) {
  EXPECT_EQ(figure_title_suffix(FigureContext{64, 5, 4, 0.95}), "v=64, c=5, u=4");
}

TEST_F(ReportTest, RunFiguresWrittenAndParsed) {
  if (!python_available()) GTEST_SKIP() << kPython << " is missing, so SVG files cannot be checked with an XML parser";
  const FigureContext context{64, 5, 4, 0.95};
  const std::vector<fs::path> paths = write_run_figures(directory_, sample_rows(6), context);

  const std::vector<std::string> names = {"train_loss.svg", "val_dice.svg", "val_loss.svg", "learning_rate.svg",
                                          "epoch_time.svg"};
  ASSERT_EQ(paths.size(), names.size());
  EXPECT_EQ(run_figure_names(), names);
  for (std::size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(paths[i], directory_ / "figures" / names[i]);
    EXPECT_EQ(parse_xml_file(paths[i]), 0) << paths[i] << " is not well-formed XML";
    const std::string svg = read_file(paths[i]);
    EXPECT_NE(svg.find("v=64, c=5, u=4"), std::string::npos) << names[i];
  }

  // Only the five figures remain: no temporary files are left behind.
  std::set<std::string> entries;
  for (const auto& entry : fs::directory_iterator(directory_ / "figures")) entries.insert(entry.path().filename());
  EXPECT_EQ(entries, std::set<std::string>(names.begin(), names.end()));

  // Training loss on a log axis: [0.06, 2] spans the decades 0.01 to 10.
  const std::string train_loss = read_file(paths[0]);
  const PlotArea area = plot_area(PlotSpec{}, {Series{"training loss", {}, {}, ""}});
  const auto loss_lines = polylines(train_loss);
  ASSERT_EQ(loss_lines.size(), 1u);
  ASSERT_EQ(loss_lines[0].size(), 6u);
  EXPECT_NEAR(loss_lines[0][2].second, log_y(area, 0.5, 0.01, 10), kPixelTolerance);
  EXPECT_NEAR(loss_lines[0][2].first, linear_x(area, 3, 1, 6), kPixelTolerance);

  const std::string val_dice = read_file(paths[1]);
  EXPECT_NE(val_dice.find("class=\"reference-line\""), std::string::npos);
  EXPECT_NE(val_dice.find(">target 0.95</text>"), std::string::npos);

  // The missing learning rate of epoch 3 splits that curve.
  EXPECT_EQ(polylines(read_file(paths[3])).size(), 2u);
}

TEST_F(ReportTest, RunFiguresReplacedOnNextEpoch) {
  const FigureContext context{32, 3, 2, 0.9};
  write_run_figures(directory_, sample_rows(5), context);
  write_run_figures(directory_, sample_rows(7), context);

  const auto lines = polylines(read_file(directory_ / "figures" / "epoch_time.svg"));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].size(), 7u);
  EXPECT_NE(read_file(directory_ / "figures" / "val_dice.svg").find(">target 0.9</text>"), std::string::npos);
}

TEST_F(ReportTest, RunFiguresAfterFirstEpoch) {
  const std::vector<fs::path> paths = write_run_figures(directory_, sample_rows(1), FigureContext{16, 2, 1, 0.95});

  // One epoch: the x axis is [0, 2] in whole epochs, so the point sits at mid-width.
  const PlotArea area = plot_area(PlotSpec{}, {Series{"validation Dice", {}, {}, ""}});
  const std::string val_dice = read_file(paths[1]);
  const auto circles = circle_centres(val_dice);
  ASSERT_EQ(circles.size(), 1u);
  EXPECT_NEAR(circles[0].first, area.left + area.width / 2, kPixelTolerance);
  const std::size_t x_ticks_start = val_dice.find("<g class=\"x-ticks\"");
  ASSERT_NE(x_ticks_start, std::string::npos);
  const std::string x_ticks = val_dice.substr(x_ticks_start, val_dice.find("</g>", x_ticks_start) - x_ticks_start);
  EXPECT_EQ(all_matches(x_ticks, R"re(>([^<]*)</text>)re"), (std::vector<std::string>{"0", "1", "2"}));
}

TEST_F(ReportTest, RunFiguresRejectInvalidContext) {
  EXPECT_THROW(write_run_figures(directory_, sample_rows(2), FigureContext{0, 5, 4, 0.95}), std::invalid_argument);
  EXPECT_THROW(write_run_figures(directory_, sample_rows(2), FigureContext{64, 5, 4, 1.5}), std::invalid_argument);
  EXPECT_FALSE(fs::exists(directory_ / "figures"));
}

// ---------------------------------------------------------------- slice images

TEST(ClassColour, BackgroundBlackPaletteDistinctAndCycling) {
  EXPECT_EQ(class_colour(0), (Rgb{0, 0, 0}));

  std::set<std::tuple<int, int, int>> seen;
  for (int c = 1; c <= kClassPaletteSize; ++c) {
    const Rgb colour = class_colour(c);
    EXPECT_NE(colour, (Rgb{0, 0, 0})) << "class " << c;
    EXPECT_NE(colour, kPanelGapColour) << "class " << c;
    seen.insert({colour.r, colour.g, colour.b});
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kClassPaletteSize));

  EXPECT_EQ(class_colour(kClassPaletteSize + 1), class_colour(1));
  EXPECT_EQ(class_colour(2 * kClassPaletteSize + 3), class_colour(3));
}

TEST(SliceLayout, ScaleAndSizeForCommonShapes) {
  const SliceImageLayout cube16 = slice_image_layout({16, 16, 16}, true);
  EXPECT_EQ(cube16.scale, 8);
  EXPECT_EQ(cube16.cell_px, 128);
  EXPECT_EQ(cube16.columns, 3);
  EXPECT_EQ(cube16.width_px, 3 * 128 + 4 * kPanelGapPx);
  EXPECT_EQ(cube16.height_px, 4 * 128 + 5 * kPanelGapPx);

  const SliceImageLayout cube64 = slice_image_layout({64, 64, 64}, false);
  EXPECT_EQ(cube64.scale, 2);
  EXPECT_EQ(cube64.columns, 2);
  EXPECT_EQ(cube64.width_px, 2 * 128 + 3 * kPanelGapPx);

  EXPECT_EQ(slice_image_layout({50, 50, 50}, false).scale, 3);
  EXPECT_EQ(slice_image_layout({200, 200, 200}, false).scale, 1);
  EXPECT_EQ(slice_image_layout({200, 200, 200}, false).cell_px, 200);
}

TEST(SliceLayout, VoxelPixelByHand) {
  // Cells of 128 px with 4 px gaps: column 1 starts at 4 + 132, row 1 at 4 + 132.
  const SliceImageLayout layout = slice_image_layout({16, 16, 16}, true);
  const PixelPosition position = layout.voxel_pixel(PanelRow::kSliceHeight, PanelColumn::kTrueMask, 2, 3);
  EXPECT_EQ(position.x, 136 + 3 * 8);
  EXPECT_EQ(position.y, 136 + 2 * 8);

  const PixelPosition last = layout.voxel_pixel(PanelRow::kProjectionDepth, PanelColumn::kPredictedMask, 15, 15);
  EXPECT_EQ(last.x + layout.scale, layout.width_px - kPanelGapPx);
  EXPECT_EQ(last.y + layout.scale, layout.height_px - kPanelGapPx);
}

TEST(SliceLayout, NonPositiveExtentRejected) {
  EXPECT_THROW(slice_image_layout({0, 4, 4}, false), std::invalid_argument);
}

// A [4, 6, 10] sample with a few coloured voxels, so that every panel row
// reads a different pair of axes and a mix-up shows.
struct SliceFixture {
  VolumeShape shape{4, 6, 10};
  std::vector<float> volume = std::vector<float>(3 * 4 * 6 * 10, 0.0f);
  std::vector<std::uint16_t> true_mask = std::vector<std::uint16_t>(4 * 6 * 10, 0);
  std::vector<std::uint16_t> predicted_mask = std::vector<std::uint16_t>(4 * 6 * 10, 0);

  std::size_t index(int d, int h, int w) const { return (static_cast<std::size_t>(d) * 6 + h) * 10 + w; }

  void set(int d, int h, int w, std::array<float, 3> rgb, std::uint16_t true_class, std::uint16_t predicted_class) {
    for (std::size_t c = 0; c < 3; ++c) volume[c * 240 + index(d, h, w)] = rgb[c];
    true_mask[index(d, h, w)] = true_class;
    predicted_mask[index(d, h, w)] = predicted_class;
  }

  SliceFixture() {
    set(2, 1, 7, {1.0f, 0.5f, 0.0f}, 3, 2);   // on the middle depth slice (d = 2)
    set(1, 1, 7, {0.0f, 1.0f, 0.0f}, 7, 0);   // behind it, seen only in the projection
    set(0, 3, 9, {0.0f, 0.0f, 1.0f}, 1, 0);   // on the middle height slice (h = 3)
    set(3, 4, 5, {0.2f, 0.4f, 0.6f}, 13, 5);  // on the middle width slice (w = 5)
  }
};

Rgb expected_volume_colour(float r, float g, float b) {
  auto to_byte = [](float value) { return static_cast<std::uint8_t>(std::lround(value * 255.0)); };
  return {to_byte(r), to_byte(g), to_byte(b)};
}

// Expects every pixel of the voxel's block to have `colour`.
void expect_block(const RgbImage& image, const SliceImageLayout& layout, PanelRow row, PanelColumn column,
                  int panel_row, int panel_col, Rgb colour) {
  const PixelPosition origin = layout.voxel_pixel(row, column, panel_row, panel_col);
  for (int dy = 0; dy < layout.scale; ++dy) {
    for (int dx = 0; dx < layout.scale; ++dx) {
      const Rgb actual = image.at(origin.x + dx, origin.y + dy);
      ASSERT_EQ(actual, colour) << "panel row " << static_cast<int>(row) << ", column " << static_cast<int>(column)
                                << ", voxel (" << panel_row << ", " << panel_col << "), pixel offset (" << dx
                                << ", " << dy << "): got " << int(actual.r) << "," << int(actual.g) << ","
                                << int(actual.b);
    }
  }
}

std::uint32_t read_big_endian(const std::string& bytes, std::size_t offset) {
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < 4; ++i) value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return value;
}

TEST_F(ReportTest, SliceImagePngHeaderAndPixels) {
  const SliceFixture sample;
  const fs::path path = directory_ / "sample.png";
  write_slice_image(path, sample.shape, sample.volume, sample.true_mask, sample.predicted_mask);

  // The longest edge is 10 voxels, so the scale is 13, cells are 130 px, and there are three columns.
  const SliceImageLayout layout = slice_image_layout(sample.shape, true);
  ASSERT_EQ(layout.scale, 13);
  ASSERT_EQ(layout.width_px, 3 * 130 + 4 * kPanelGapPx);
  ASSERT_EQ(layout.height_px, 4 * 130 + 5 * kPanelGapPx);

  // The IHDR chunk follows the 8-byte signature: length, "IHDR", width, height, bit depth, colour type.
  const std::string png = read_file(path);
  ASSERT_GT(png.size(), 33u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(read_big_endian(png, 8), 13u);
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(read_big_endian(png, 16), static_cast<std::uint32_t>(layout.width_px));
  EXPECT_EQ(read_big_endian(png, 20), static_cast<std::uint32_t>(layout.height_px));
  EXPECT_EQ(png[24], 8);  // bits per channel
  EXPECT_EQ(png[25], 2);  // truecolour RGB

  // Decode with stb_image, an independent PNG reader.
  int width = 0;
  int height = 0;
  int channels = 0;
  unsigned char* decoded = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()),
                                                 static_cast<int>(png.size()), &width, &height, &channels, 3);
  ASSERT_NE(decoded, nullptr) << "stb_image cannot decode " << path << ": " << stbi_failure_reason();
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.assign(decoded, decoded + static_cast<std::size_t>(width) * height * 3);
  stbi_image_free(decoded);
  ASSERT_EQ(width, layout.width_px);
  ASSERT_EQ(height, layout.height_px);

  // Middle depth slice (d = 2): voxel (h = 1, w = 7).
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kVolume, 1, 7, expected_volume_colour(1, 0.5, 0));
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kTrueMask, 1, 7, class_colour(3));
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kPredictedMask, 1, 7, class_colour(2));
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kVolume, 0, 0, Rgb{0, 0, 0});
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kTrueMask, 0, 0, class_colour(0));

  // Middle height slice (h = 3): voxel (d = 0, w = 9).
  expect_block(image, layout, PanelRow::kSliceHeight, PanelColumn::kVolume, 0, 9, expected_volume_colour(0, 0, 1));
  expect_block(image, layout, PanelRow::kSliceHeight, PanelColumn::kTrueMask, 0, 9, class_colour(1));
  expect_block(image, layout, PanelRow::kSliceHeight, PanelColumn::kPredictedMask, 0, 9, class_colour(0));

  // Middle width slice (w = 5): voxel (d = 3, h = 4); class 13 takes the colour of class 1.
  expect_block(image, layout, PanelRow::kSliceWidth, PanelColumn::kVolume, 3, 4, expected_volume_colour(0.2f, 0.4f, 0.6f));
  expect_block(image, layout, PanelRow::kSliceWidth, PanelColumn::kTrueMask, 3, 4, class_colour(1));
  expect_block(image, layout, PanelRow::kSliceWidth, PanelColumn::kPredictedMask, 3, 4, class_colour(5));

  // Projection along D at (h = 1, w = 7): channel maxima of both voxels, and
  // the larger class index of each mask.
  expect_block(image, layout, PanelRow::kProjectionDepth, PanelColumn::kVolume, 1, 7, expected_volume_colour(1, 1, 0));
  expect_block(image, layout, PanelRow::kProjectionDepth, PanelColumn::kTrueMask, 1, 7, class_colour(7));
  expect_block(image, layout, PanelRow::kProjectionDepth, PanelColumn::kPredictedMask, 1, 7, class_colour(2));

  // Frame, and the unused part of a cell: the width-slice panel is 4 x 6 voxels
  // (52 x 78 px) inside a 130 px cell.
  EXPECT_EQ(image.at(0, 0), kPanelGapColour);
  EXPECT_EQ(image.at(width - 1, height - 1), kPanelGapColour);
  const PixelPosition width_panel = layout.voxel_pixel(PanelRow::kSliceWidth, PanelColumn::kVolume, 0, 0);
  EXPECT_EQ(image.at(width_panel.x + 100, width_panel.y + 10), kPanelGapColour);
  EXPECT_EQ(image.at(width_panel.x + 10, width_panel.y + 60), kPanelGapColour);

  // The PNG contains exactly the rendered pixels.
  const RgbImage rendered = render_slice_image(sample.shape, sample.volume, sample.true_mask, sample.predicted_mask);
  EXPECT_EQ(image.pixels, rendered.pixels);
}

TEST(SliceImage, TwoColumnsWithoutPrediction) {
  const SliceFixture sample;
  const RgbImage image = render_slice_image(sample.shape, sample.volume, sample.true_mask);
  const SliceImageLayout layout = slice_image_layout(sample.shape, false);
  EXPECT_EQ(image.width, 2 * 130 + 3 * kPanelGapPx);
  EXPECT_EQ(image.height, layout.height_px);
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kTrueMask, 1, 7, class_colour(3));
}

TEST(SliceImage, VolumeValuesClampedAndNanBlack) {
  SliceFixture sample;
  sample.set(2, 0, 0, {1.7f, -0.3f, std::numeric_limits<float>::quiet_NaN()}, 0, 0);
  const RgbImage image = render_slice_image(sample.shape, sample.volume, sample.true_mask);
  const SliceImageLayout layout = slice_image_layout(sample.shape, false);
  expect_block(image, layout, PanelRow::kSliceDepth, PanelColumn::kVolume, 0, 0, Rgb{255, 0, 0});
}

TEST(SliceImage, WrongBufferSizeNamed) {
  const SliceFixture sample;
  const std::vector<std::uint16_t> short_mask(10, 0);
  try {
    render_slice_image(sample.shape, sample.volume, short_mask);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("true mask has 10 elements"), std::string::npos) << message;
    EXPECT_NE(message.find("needs 240"), std::string::npos) << message;
  }
  EXPECT_THROW(render_slice_image(sample.shape, sample.volume, sample.true_mask, short_mask), std::invalid_argument);
  EXPECT_THROW(render_slice_image(sample.shape, std::vector<float>(5), sample.true_mask), std::invalid_argument);
}

}  // namespace
}  // namespace scaffold
