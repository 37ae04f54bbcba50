// Line charts as standalone SVG 1.1 documents, so that a run's figures need no
// plotting program. A chart has axes with 1-2-5 or decade ticks, axis labels,
// a title, an optional dashed reference line and a legend for several series.
// A missing value leaves a gap in its line.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace scaffold {

// One line of a chart. `x` and `y` must have equal lengths. A point whose x or
// y is NaN or infinite (or, on a log y axis, whose y is not positive) is not
// drawn and splits the line into separate pieces.
struct Series {
  std::string name;
  std::vector<double> x;
  std::vector<double> y;
  std::string colour;  // any SVG colour ("#1f5fbf", "red"); empty picks one by series position
};

struct PlotSpec {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_y = false;
  bool integer_x = false;                 // x values are counts (epochs), so x ticks step by at least 1
  std::optional<double> horizontal_line;  // drawn dashed across the plot, e.g. the target Dice
  std::string horizontal_line_label;      // text beside that line; empty prints its value
  int width = 640;                        // pixels
  int height = 400;                       // pixels
};

// Inner rectangle of the chart, where the data is drawn (pixels, y down).
struct PlotArea {
  double left = 0;
  double top = 0;
  double width = 0;
  double height = 0;
};

// Rectangle that render_line_plot draws the data into for these inputs. The
// right margin grows to hold the legend when there is more than one series.
PlotArea plot_area(const PlotSpec& spec, const std::vector<Series>& series);

// Tick values of a linear axis that covers [low, high]: multiples of a step
// of 1, 2 or 5 times a power of ten, chosen so that about five intervals span
// the range. With `integer_steps` the step is at least 1. The first and last
// ticks are the axis limits, so they enclose [low, high]. A zero-width range is
// widened by 10% of its value (or by 1 around zero). Throws
// std::invalid_argument for a non-finite bound or low > high.
std::vector<double> linear_ticks(double low, double high, bool integer_steps = false);

// Tick values of a log axis covering [low, high] (both > 0): powers of ten
// from the decade at or below `low` to the decade at or above `high`, every
// k-th decade when more than eight would be needed. A range inside a single
// power of ten is widened by one decade each way. Throws std::invalid_argument
// for a non-positive or non-finite bound or low > high.
std::vector<double> log_ticks(double low, double high);

// Label of a linear-axis tick: fixed notation with as many decimals as `step`
// needs ("0.2", "1.0", "15"), or %g notation when the values are very large or
// very small.
std::string format_linear_tick(double value, double step);

// Label of a log-axis tick, which is a power of ten: plain for 0.001 to 1000
// ("0.01", "100"), otherwise "1e-5" or "1e6".
std::string format_log_tick(double value);

// Text with &, <, >, " and ' replaced by XML entities, and control characters
// that XML 1.0 forbids replaced by spaces, so it is safe in element content
// and in attribute values. The text must be UTF-8, because other bytes pass
// through unchanged and make the document invalid.
std::string escape_xml(std::string_view text);

// Renders the chart as a complete SVG document. The axes span the ticks of the
// finite values of all series plus the horizontal line. Points are marked with
// circles when a series has at most 30 drawn points, and an isolated point
// always gets a marker. Values left out of a log axis and an empty chart are
// stated in a note below the plot. Throws std::invalid_argument when a series'
// x and y lengths differ or the size is under 200 x 150 pixels.
std::string render_line_plot(const PlotSpec& spec, const std::vector<Series>& series);

}  // namespace scaffold
