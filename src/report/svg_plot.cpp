#include "report/svg_plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <limits>
#include <stdexcept>

namespace scaffold {

namespace {

// Margins around the plot area, in pixels. The left margin leaves room for y
// tick labels of up to about eight characters and the rotated y label. The
// bottom margin leaves room for the x tick labels, the x label and the note line.
constexpr double kMarginLeft = 80;
constexpr double kMarginTop = 40;
constexpr double kMarginRight = 20;
constexpr double kMarginBottom = 62;

// Estimated advance of one character at the 12 px font size, used only to size
// the legend, because SVG has no text measurement before rendering.
constexpr double kCharWidthPx = 7;

constexpr int kMinWidth = 200;
constexpr int kMinHeight = 150;
constexpr std::size_t kMaxMarkedPoints = 30;
constexpr int kMaxLogTicks = 8;

// Relative slack for floor/ceil on tick multiples, so that 0.9 / 0.05 =
// 17.999999999999996 still counts as the 18th multiple.
constexpr double kTickSlack = 1e-9;

// Exponents beyond these would make 10^e overflow to infinity or underflow to zero.
constexpr int kMinDecade = -300;
constexpr int kMaxDecade = 300;

constexpr std::array<const char*, 8> kDefaultColours = {"#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c",
                                                        "#c92a2a", "#0b7285", "#5c940d", "#495057"};

double power_of_ten(int exponent) {
  // Dividing by an exact 10^n gives the correctly rounded 10^-n (0.01, not 0.010000000000000002).
  return exponent >= 0 ? std::pow(10.0, exponent) : 1.0 / std::pow(10.0, -exponent);
}

// k * mantissa * 10^exponent, rounded once, so that tick 3 of step 0.2 is exactly 0.6.
double tick_multiple(long long k, int mantissa, int exponent) {
  const double multiple = static_cast<double>(k) * mantissa;
  const double value = exponent >= 0 ? multiple * power_of_ten(exponent) : multiple / power_of_ten(-exponent);
  return value + 0.0;  // turns -0 into 0
}

double floor_with_slack(double quotient) {
  return std::floor(quotient + kTickSlack * std::max(1.0, std::abs(quotient)));
}

double ceil_with_slack(double quotient) {
  return std::ceil(quotient - kTickSlack * std::max(1.0, std::abs(quotient)));
}

int decimals_for_step(double step) {
  return std::max(0, -static_cast<int>(std::floor(std::log10(step) + kTickSlack)));
}

std::string format_px(double value) { return fmt::format("{:.2f}", value); }

bool legend_shown(const std::vector<Series>& series) { return series.size() > 1; }

double legend_width(const PlotSpec& spec, const std::vector<Series>& series) {
  std::size_t longest_name = 0;
  for (const Series& line : series) longest_name = std::max(longest_name, line.name.size());
  return std::min(40.0 + kCharWidthPx * static_cast<double>(longest_name), spec.width / 3.0);
}

std::string series_colour(const Series& line, std::size_t index) {
  if (!line.colour.empty()) return line.colour;
  return kDefaultColours[index % kDefaultColours.size()];
}

bool is_drawable(double x, double y, bool log_y) {
  return std::isfinite(x) && std::isfinite(y) && (!log_y || y > 0);
}

// One axis: its limits are the first and last tick.
struct Axis {
  std::vector<double> ticks;
  std::vector<double> minor_ticks;  // unlabelled grid lines between decades of a log axis
  std::vector<std::string> labels;
  bool log = false;

  double low() const { return ticks.front(); }
  double high() const { return ticks.back(); }
};

Axis make_linear_axis(double low, double high, bool integer_steps) {
  Axis axis;
  axis.ticks = linear_ticks(low, high, integer_steps);
  const double step = axis.ticks.size() > 1 ? axis.ticks[1] - axis.ticks[0] : 1.0;
  for (double tick : axis.ticks) axis.labels.push_back(format_linear_tick(tick, step));
  return axis;
}

Axis make_log_axis(double low, double high) {
  Axis axis;
  axis.log = true;
  axis.ticks = log_ticks(low, high);
  for (double tick : axis.ticks) axis.labels.push_back(format_log_tick(tick));

  // Grid lines at 2..9 times each decade help read values when the axis spans
  // a few consecutive decades, but more decades would crowd the plot.
  const bool consecutive_decades = axis.ticks.size() >= 2 && axis.ticks[1] / axis.ticks[0] < 10.5;
  if (consecutive_decades && axis.ticks.size() <= 5) {
    for (std::size_t i = 0; i + 1 < axis.ticks.size(); ++i) {
      for (int multiple = 2; multiple <= 9; ++multiple) axis.minor_ticks.push_back(axis.ticks[i] * multiple);
    }
  }
  return axis;
}

// Maps data values to pixel positions inside the plot area.
struct Transform {
  PlotArea area;
  Axis x_axis;
  Axis y_axis;

  double x_px(double x) const {
    return area.left + (x - x_axis.low()) / (x_axis.high() - x_axis.low()) * area.width;
  }

  double y_px(double y) const {
    if (y_axis.log) {
      const double fraction = (std::log10(y) - std::log10(y_axis.low())) /
                              (std::log10(y_axis.high()) - std::log10(y_axis.low()));
      return area.top + area.height - fraction * area.height;
    }
    const double fraction = (y - y_axis.low()) / (y_axis.high() - y_axis.low());
    return area.top + area.height - fraction * area.height;
  }
};

void validate_inputs(const PlotSpec& spec, const std::vector<Series>& series) {
  if (spec.width < kMinWidth || spec.height < kMinHeight) {
    throw std::invalid_argument(fmt::format("plot size {} x {} px is too small for axes and labels; use at least {} x {}",
                                            spec.width, spec.height, kMinWidth, kMinHeight));
  }
  for (const Series& line : series) {
    if (line.x.size() != line.y.size()) {
      throw std::invalid_argument(fmt::format("series \"{}\" has {} x values but {} y values; give one y per x",
                                              line.name, line.x.size(), line.y.size()));
    }
  }
}

// Data limits, counts of points left out, and the notes that report them.
struct DataSummary {
  double x_low = std::numeric_limits<double>::infinity();
  double x_high = -std::numeric_limits<double>::infinity();
  double y_low = std::numeric_limits<double>::infinity();
  double y_high = -std::numeric_limits<double>::infinity();
  std::size_t drawable_points = 0;
  std::size_t non_positive_on_log = 0;
  bool reference_line_drawn = false;
  std::vector<std::string> notes;
};

DataSummary summarise_data(const PlotSpec& spec, const std::vector<Series>& series) {
  DataSummary summary;
  for (const Series& line : series) {
    for (std::size_t i = 0; i < line.x.size(); ++i) {
      const double x = line.x[i];
      const double y = line.y[i];
      if (is_drawable(x, y, spec.log_y)) {
        summary.x_low = std::min(summary.x_low, x);
        summary.x_high = std::max(summary.x_high, x);
        summary.y_low = std::min(summary.y_low, y);
        summary.y_high = std::max(summary.y_high, y);
        ++summary.drawable_points;
      } else if (std::isfinite(x) && std::isfinite(y)) {
        ++summary.non_positive_on_log;
      }
    }
  }

  if (spec.horizontal_line) {
    const double level = *spec.horizontal_line;
    summary.reference_line_drawn = std::isfinite(level) && (!spec.log_y || level > 0);
    if (summary.reference_line_drawn) {
      summary.y_low = std::min(summary.y_low, level);
      summary.y_high = std::max(summary.y_high, level);
    } else {
      summary.notes.push_back(fmt::format("reference line at {} cannot be shown on this axis", level));
    }
  }

  if (summary.non_positive_on_log > 0) {
    summary.notes.push_back(fmt::format("{} value{} <= 0 not shown on the log axis", summary.non_positive_on_log,
                                        summary.non_positive_on_log == 1 ? "" : "s"));
  }
  if (summary.drawable_points == 0) summary.notes.push_back("no data points to show");
  return summary;
}

Transform make_transform(const PlotSpec& spec, const std::vector<Series>& series, const DataSummary& summary) {
  Transform transform;
  transform.area = plot_area(spec, series);

  if (summary.drawable_points > 0) {
    transform.x_axis = make_linear_axis(summary.x_low, summary.x_high, spec.integer_x);
  } else {
    transform.x_axis = make_linear_axis(0.0, 1.0, spec.integer_x);
  }

  // The y limits exist when there is a point or a drawn reference line.
  if (std::isfinite(summary.y_low)) {
    transform.y_axis = spec.log_y ? make_log_axis(summary.y_low, summary.y_high)
                                  : make_linear_axis(summary.y_low, summary.y_high, false);
  } else {
    transform.y_axis = spec.log_y ? make_log_axis(0.1, 1.0) : make_linear_axis(0.0, 1.0, false);
  }
  return transform;
}

void append_grid_and_ticks(std::string& svg, const Transform& transform) {
  const PlotArea& area = transform.area;
  const double bottom = area.top + area.height;
  const double right = area.left + area.width;
  auto out = std::back_inserter(svg);

  fmt::format_to(out, "<g class=\"grid\" stroke=\"#e6e6e6\" stroke-width=\"1\">\n");
  for (double tick : transform.y_axis.minor_ticks) {
    const std::string y = format_px(transform.y_px(tick));
    fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#f3f3f3\"/>\n", format_px(area.left), y,
                   format_px(right), y);
  }
  for (double tick : transform.x_axis.ticks) {
    const std::string x = format_px(transform.x_px(tick));
    fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n", x, format_px(area.top), x,
                   format_px(bottom));
  }
  for (double tick : transform.y_axis.ticks) {
    const std::string y = format_px(transform.y_px(tick));
    fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n", format_px(area.left), y,
                   format_px(right), y);
  }
  fmt::format_to(out, "</g>\n");

  fmt::format_to(out, "<g class=\"x-ticks\" font-size=\"12\" text-anchor=\"middle\" fill=\"#222\">\n");
  for (std::size_t i = 0; i < transform.x_axis.ticks.size(); ++i) {
    const std::string x = format_px(transform.x_px(transform.x_axis.ticks[i]));
    fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n", x, format_px(bottom), x,
                   format_px(bottom + 5));
    fmt::format_to(out, "<text x=\"{}\" y=\"{}\">{}</text>\n", x, format_px(bottom + 18),
                   escape_xml(transform.x_axis.labels[i]));
  }
  fmt::format_to(out, "</g>\n");

  fmt::format_to(out, "<g class=\"y-ticks\" font-size=\"12\" text-anchor=\"end\" fill=\"#222\">\n");
  for (std::size_t i = 0; i < transform.y_axis.ticks.size(); ++i) {
    const double y = transform.y_px(transform.y_axis.ticks[i]);
    fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n", format_px(area.left - 5),
                   format_px(y), format_px(area.left), format_px(y));
    fmt::format_to(out, "<text x=\"{}\" y=\"{}\">{}</text>\n", format_px(area.left - 8), format_px(y + 4),
                   escape_xml(transform.y_axis.labels[i]));
  }
  fmt::format_to(out, "</g>\n");

  fmt::format_to(out, "<rect class=\"plot-area\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" "
                 "stroke=\"#333\"/>\n",
                 format_px(area.left), format_px(area.top), format_px(area.width), format_px(area.height));
}

void append_labels(std::string& svg, const PlotSpec& spec, const Transform& transform) {
  const PlotArea& area = transform.area;
  auto out = std::back_inserter(svg);

  fmt::format_to(out, "<text class=\"title\" x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\" "
                 "fill=\"#111\">{}</text>\n",
                 format_px(spec.width / 2.0), escape_xml(spec.title));
  fmt::format_to(out, "<text class=\"x-label\" x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" "
                 "fill=\"#111\">{}</text>\n",
                 format_px(area.left + area.width / 2), format_px(area.top + area.height + 38),
                 escape_xml(spec.x_label));

  const std::string label_x = "18";
  const std::string label_y = format_px(area.top + area.height / 2);
  fmt::format_to(out, "<text class=\"y-label\" x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\" font-size=\"13\" "
                 "text-anchor=\"middle\" fill=\"#111\">{}</text>\n",
                 label_x, label_y, label_x, label_y, escape_xml(spec.y_label));
}

void append_reference_line(std::string& svg, const PlotSpec& spec, const Transform& transform) {
  const PlotArea& area = transform.area;
  const double level = *spec.horizontal_line;
  const std::string y = format_px(transform.y_px(level));
  const std::string label =
      spec.horizontal_line_label.empty() ? fmt::format("{:g}", level) : spec.horizontal_line_label;
  auto out = std::back_inserter(svg);

  fmt::format_to(out, "<g class=\"reference-line\">\n");
  fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#666\" stroke-width=\"1.2\" "
                 "stroke-dasharray=\"6 4\"/>\n",
                 format_px(area.left), y, format_px(area.left + area.width), y);
  fmt::format_to(out, "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#555\">{}</text>\n",
                 format_px(area.left + area.width - 4), format_px(transform.y_px(level) - 4), escape_xml(label));
  fmt::format_to(out, "</g>\n");
}

// Draws one series as polylines between gaps, plus markers.
void append_series(std::string& svg, const PlotSpec& spec, const Series& line, std::size_t index,
                   const Transform& transform) {
  const std::string colour = escape_xml(series_colour(line, index));

  // Split into runs of consecutive drawable points. Each run becomes one polyline.
  std::vector<std::vector<std::pair<double, double>>> runs(1);
  for (std::size_t i = 0; i < line.x.size(); ++i) {
    if (is_drawable(line.x[i], line.y[i], spec.log_y)) {
      runs.back().emplace_back(transform.x_px(line.x[i]), transform.y_px(line.y[i]));
    } else if (!runs.back().empty()) {
      runs.emplace_back();
    }
  }
  if (runs.back().empty()) runs.pop_back();

  std::size_t drawn_points = 0;
  for (const auto& run : runs) drawn_points += run.size();
  const bool mark_every_point = drawn_points <= kMaxMarkedPoints;

  auto out = std::back_inserter(svg);
  fmt::format_to(out, "<g class=\"series\" id=\"series-{}\">\n<title>{}</title>\n", index, escape_xml(line.name));
  for (const auto& run : runs) {
    if (run.size() >= 2) {
      fmt::format_to(out, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" stroke-linejoin=\"round\" "
                     "points=\"",
                     colour);
      for (std::size_t i = 0; i < run.size(); ++i) {
        fmt::format_to(out, "{}{},{}", i == 0 ? "" : " ", format_px(run[i].first), format_px(run[i].second));
      }
      fmt::format_to(out, "\"/>\n");
    }
    if (mark_every_point || run.size() == 1) {
      for (const auto& [x, y] : run) {
        fmt::format_to(out, "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>\n", format_px(x), format_px(y), colour);
      }
    }
  }
  fmt::format_to(out, "</g>\n");
}

void append_legend(std::string& svg, const std::vector<Series>& series, const Transform& transform) {
  const double x = transform.area.left + transform.area.width + 12;
  auto out = std::back_inserter(svg);

  fmt::format_to(out, "<g class=\"legend\" font-size=\"12\" fill=\"#222\">\n");
  for (std::size_t i = 0; i < series.size(); ++i) {
    const double y = transform.area.top + 10 + 18.0 * static_cast<double>(i);
    const std::string colour = escape_xml(series_colour(series[i], i));
    fmt::format_to(out, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                   format_px(x), format_px(y), format_px(x + 20), format_px(y), colour);
    fmt::format_to(out, "<text x=\"{}\" y=\"{}\">{}</text>\n", format_px(x + 26), format_px(y + 4),
                   escape_xml(series[i].name));
  }
  fmt::format_to(out, "</g>\n");
}

}  // namespace

PlotArea plot_area(const PlotSpec& spec, const std::vector<Series>& series) {
  const double right_margin = kMarginRight + (legend_shown(series) ? legend_width(spec, series) : 0.0);
  PlotArea area;
  area.left = kMarginLeft;
  area.top = kMarginTop;
  area.width = spec.width - kMarginLeft - right_margin;
  area.height = spec.height - kMarginTop - kMarginBottom;
  return area;
}

std::vector<double> linear_ticks(double low, double high, bool integer_steps) {
  if (!std::isfinite(low) || !std::isfinite(high) || low > high || !std::isfinite(high - low)) {
    throw std::invalid_argument(
        fmt::format("invalid axis range [{}, {}]; give finite bounds with low <= high", low, high));
  }

  // A range too narrow to resolve in double precision is treated as a constant.
  if (high - low <= 1e-12 * std::max(std::abs(low), std::abs(high))) {
    const double centre = (low + high) / 2;
    const double widening = centre == 0 ? 1.0 : std::abs(centre) * 0.1;
    low = centre - widening;
    high = centre + widening;
  }

  // Smallest 1-2-5 step that covers the range in at most five intervals.
  const double raw_step = (high - low) / 5;
  int exponent = static_cast<int>(std::floor(std::log10(raw_step)));
  int mantissa = 10;
  for (int candidate : {1, 2, 5}) {
    if (candidate * power_of_ten(exponent) >= raw_step * (1 - kTickSlack)) {
      mantissa = candidate;
      break;
    }
  }
  if (mantissa == 10) {
    mantissa = 1;
    ++exponent;
  }
  if (integer_steps && exponent < 0) {
    mantissa = 1;
    exponent = 0;
  }

  const double step = mantissa * power_of_ten(exponent);
  const auto first = static_cast<long long>(floor_with_slack(low / step));
  const auto last = static_cast<long long>(ceil_with_slack(high / step));
  std::vector<double> ticks;
  for (long long k = first; k <= last; ++k) ticks.push_back(tick_multiple(k, mantissa, exponent));
  return ticks;
}

std::vector<double> log_ticks(double low, double high) {
  if (!std::isfinite(low) || !std::isfinite(high) || low <= 0 || low > high) {
    throw std::invalid_argument(
        fmt::format("invalid log axis range [{}, {}]; give finite bounds with 0 < low <= high", low, high));
  }

  int first_decade = static_cast<int>(floor_with_slack(std::log10(low)));
  int last_decade = static_cast<int>(ceil_with_slack(std::log10(high)));
  first_decade = std::clamp(first_decade, kMinDecade, kMaxDecade);
  last_decade = std::clamp(last_decade, kMinDecade, kMaxDecade);
  if (first_decade == last_decade) {
    --first_decade;
    ++last_decade;
  }

  // Label every stride-th decade so that at most kMaxLogTicks labels appear.
  const int decades = last_decade - first_decade;
  const int stride = (decades + kMaxLogTicks - 2) / (kMaxLogTicks - 1);
  first_decade = static_cast<int>(std::floor(static_cast<double>(first_decade) / stride)) * stride;
  last_decade = static_cast<int>(std::ceil(static_cast<double>(last_decade) / stride)) * stride;

  std::vector<double> ticks;
  for (int decade = first_decade; decade <= last_decade; decade += stride) ticks.push_back(power_of_ten(decade));
  return ticks;
}

std::string format_linear_tick(double value, double step) {
  const double magnitude = std::max(std::abs(value), std::abs(step));
  if (magnitude >= 1e6 || std::abs(step) < 1e-4) return fmt::format("{:g}", value + 0.0);
  return fmt::format("{:.{}f}", value + 0.0, decimals_for_step(std::abs(step)));
}

std::string format_log_tick(double value) {
  if (!(value > 0) || !std::isfinite(value)) return fmt::format("{:g}", value);
  const int exponent = static_cast<int>(std::lround(std::log10(value)));
  if (value != power_of_ten(exponent)) return fmt::format("{:g}", value);
  if (exponent >= 0 && exponent <= 3) return fmt::format("{:.0f}", value);
  if (exponent < 0 && exponent >= -3) return fmt::format("{:.{}f}", value, -exponent);
  return fmt::format("1e{}", exponent);
}

std::string escape_xml(std::string_view text) {
  std::string escaped;
  escaped.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': escaped += "&amp;"; break;
      case '<': escaped += "&lt;"; break;
      case '>': escaped += "&gt;"; break;
      case '"': escaped += "&quot;"; break;
      case '\'': escaped += "&apos;"; break;
      case '\t':
      case '\n':
      case '\r': escaped += c; break;
      default:
        // XML 1.0 allows no other character below 0x20, not even as an entity.
        escaped += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
    }
  }
  return escaped;
}

std::string render_line_plot(const PlotSpec& spec, const std::vector<Series>& series) {
  validate_inputs(spec, series);
  const DataSummary summary = summarise_data(spec, series);
  const Transform transform = make_transform(spec, series, summary);

  std::string svg;
  auto out = std::back_inserter(svg);
  fmt::format_to(out, "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n");
  fmt::format_to(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{0}\" height=\"{1}\" "
                 "viewBox=\"0 0 {0} {1}\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n",
                 spec.width, spec.height);
  fmt::format_to(out, "<title>{}</title>\n", escape_xml(spec.title));
  fmt::format_to(out, "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"white\"/>\n", spec.width, spec.height);

  append_grid_and_ticks(svg, transform);
  append_labels(svg, spec, transform);
  if (summary.reference_line_drawn) append_reference_line(svg, spec, transform);
  for (std::size_t i = 0; i < series.size(); ++i) append_series(svg, spec, series[i], i, transform);
  if (legend_shown(series)) append_legend(svg, series, transform);

  if (!summary.notes.empty()) {
    std::string note;
    for (const std::string& part : summary.notes) note += (note.empty() ? "" : "; ") + part;
    fmt::format_to(out, "<text class=\"note\" x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#a33\">Note: {}</text>\n",
                   format_px(transform.area.left), spec.height - 6, escape_xml(note));
  }

  fmt::format_to(out, "</svg>\n");
  return svg;
}

}  // namespace scaffold
