#include "report/report_page.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <limits>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "core/atomic_file.hpp"
#include "report/slice_images.hpp"
#include "report/svg_plot.hpp"
#include "scaffold/version.hpp"

namespace scaffold {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Only data: images and the inline style sheet may load; everything else is
// blocked and reported on the browser console.
constexpr const char* kContentSecurityPolicy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

constexpr const char* kStyle = R"(
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f2f2f2; }
table.epochs { font-size: 0.9em; }
td.text, th.text { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 100%; }
img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
img.pixels { image-rendering: pixelated; }
.warning { color: #a33; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #888; vertical-align: middle; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; }
table.side-by-side { width: 100%; table-layout: fixed; }
table.side-by-side td { vertical-align: top; text-align: left; }
)";

// A curve that the comparison overlays for every run.
struct CurveSpec {
  const char* title;
  const char* y_label;
  bool log_y;
  bool target_line;
  double (*value)(const ReportEpochRow&);
};

const std::vector<CurveSpec>& comparison_curves() {
  static const std::vector<CurveSpec> curves = {
      {"Validation Dice", "Dice", false, true, [](const ReportEpochRow& row) { return row.val_dice; }},
      {"Training loss", "Loss per sample", true, false, [](const ReportEpochRow& row) { return row.overall_loss; }},
      {"Validation loss", "Loss per sample", false, false, [](const ReportEpochRow& row) { return row.val_loss_avg; }},
      {"Learning rate", "Learning rate", false, false,
       [](const ReportEpochRow& row) { return row.learning_rate.value_or(kNaN); }},
      {"Epoch time", "Seconds", false, false, [](const ReportEpochRow& row) { return row.epoch_duration; }},
  };
  return curves;
}

std::string utc_now_text() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S UTC", &utc);
  return text;
}

// The length of the UTF-8 sequence that starts at text[i], or 0 when it is invalid.
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  std::size_t length = 0;
  unsigned char second_low = 0x80;
  unsigned char second_high = 0xBF;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;   // no overlong forms
    if (lead == 0xED) second_high = 0x9F;  // no UTF-16 surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;
    if (lead == 0xF4) second_high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  if (byte(i + 1) < second_low || byte(i + 1) > second_high) return 0;
  for (std::size_t k = 2; k < length; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return length;
}

std::optional<int> parse_int(const std::string& text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::string format_cell(double value, const char* format) {
  if (std::isnan(value)) return "n/a";
  return fmt::format(fmt::runtime(format), value);
}

std::string run_anchor(std::size_t index) { return fmt::format("run-{}", index + 1); }

std::string run_label(std::size_t index) { return fmt::format("run {}", index + 1); }

// A column header for several runs: "run N" linked to the run's section, and the directory name.
std::string run_column_header(const std::vector<RunReport>& runs, std::size_t index) {
  return fmt::format("<th class=\"text\"><a href=\"#{}\">{}</a><br>{}</th>", run_anchor(index), run_label(index),
                     escape_html(runs[index].name));
}

void append_warnings(std::string& page, const RunReport& run) {
  if (run.warnings.empty()) return;
  page += "<ul class=\"warning\">\n";
  for (const std::string& warning : run.warnings) page += "<li>" + escape_html(warning) + "</li>\n";
  page += "</ul>\n";
}

void append_summary_table(std::string& page, const RunReport& run, std::size_t index) {
  page += fmt::format("<table class=\"summary\" id=\"summary-{}\">\n", index + 1);
  for (const SummaryField& field : summary_fields()) {
    page += fmt::format("<tr><th class=\"text\">{}</th><td class=\"text\">{}</td></tr>\n", escape_html(field.label),
                        escape_html(run.value(field.key)));
  }
  page += "</table>\n";
}

std::string svg_img(const std::string& svg, const std::string& alt) {
  return fmt::format("<img src=\"{}\" alt=\"{}\">", data_uri("image/svg+xml", svg), escape_html(alt));
}

void append_figures(std::string& page, const RunReport& run, std::size_t index) {
  page += fmt::format("<h3>Figures</h3>\n<div class=\"figures\" id=\"figures-{}\">\n", index + 1);
  if (run.figures.empty()) page += "<p>No figures.</p>\n";
  for (const ReportFile& figure : run.figures) {
    page += fmt::format("<figure>{}<figcaption>{}</figcaption></figure>\n", svg_img(figure.bytes, figure.name),
                        escape_html(figure.name));
  }
  page += "</div>\n";
}

void append_class_legend(std::string& page, const RunReport& run) {
  const std::optional<int> categories = parse_int(run.value("n_categories"));
  if (!categories || *categories < 1) return;
  page += "<p>Mask colours:";
  for (int label = 0; label <= std::min(*categories, kClassPaletteSize); ++label) {
    const Rgb colour = class_colour(label);
    page += fmt::format(" <span class=\"swatch\" style=\"background: rgb({}, {}, {})\"></span> {}", colour.r,
                        colour.g, colour.b, label == 0 ? std::string("background") : fmt::format("class {}", label));
  }
  if (*categories > kClassPaletteSize) page += fmt::format(" (the colours repeat after class {})", kClassPaletteSize);
  page += "</p>\n";
}

void append_images(std::string& page, const RunReport& run, std::size_t index) {
  page += fmt::format("<h3>Validation volumes</h3>\n<div id=\"images-{}\">\n", index + 1);
  if (run.images.empty()) {
    page += "<p>No slice images (images/ is written when training ends).</p>\n</div>\n";
    return;
  }
  page += "<p>Rows, top to bottom: the middle slice across depth, across height and across width, and the maximum "
          "over depth. Columns: the volume's three channels as RGB, the true mask and, when the run saved "
          "checkpoints, the prediction of its best checkpoint (lowest validation loss).</p>\n";
  append_class_legend(page, run);
  page += "<div class=\"figures\">\n";
  for (const ReportFile& image : run.images) {
    page += fmt::format(
        "<figure><img class=\"pixels\" src=\"{}\" width=\"{}\" height=\"{}\" alt=\"{}\"><figcaption>{}</figcaption>"
        "</figure>\n",
        data_uri("image/png", image.bytes), image.width_px, image.height_px, escape_html(image.name),
        escape_html(image.name));
  }
  page += "</div>\n</div>\n";
}

void append_epoch_table(std::string& page, const RunReport& run, std::size_t index) {
  page += "<h3>Per-epoch statistics</h3>\n";
  if (run.epochs.empty()) {
    page += "<p>No epochs recorded.</p>\n";
    return;
  }
  page += fmt::format("<table class=\"epochs\" id=\"epochs-{}\">\n<thead><tr>", index + 1);
  for (const char* column : {"epoch", "learning_rate", "epoch_loss", "overall_loss", "val_loss_epoch", "val_loss_avg",
                             "train_dice", "val_dice", "epoch_duration", "optimizer_steps", "total_optimizer_steps"}) {
    // A break opportunity after each underscore keeps the table narrow.
    std::string header = column;
    for (std::size_t at = header.find('_'); at != std::string::npos; at = header.find('_', at + 6)) {
      header.insert(at + 1, "<wbr>");
    }
    page += fmt::format("<th>{}</th>", header);
  }
  page += "</tr></thead>\n<tbody>\n";
  for (const ReportEpochRow& row : run.epochs) {
    page += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                        "<td>{}</td><td>{}</td><td>{}</td></tr>\n",
                        row.epoch, format_cell(row.learning_rate.value_or(kNaN), "{:.4g}"),
                        format_cell(row.epoch_loss, "{:.6g}"), format_cell(row.overall_loss, "{:.6g}"),
                        format_cell(row.val_loss_epoch, "{:.6g}"), format_cell(row.val_loss_avg, "{:.6g}"),
                        format_cell(row.train_dice, "{:.4f}"), format_cell(row.val_dice, "{:.4f}"),
                        format_cell(row.epoch_duration, "{:.3f}"), row.optimizer_steps, row.total_optimizer_steps);
  }
  page += "</tbody>\n</table>\n";
}

void append_config(std::string& page, const RunReport& run, std::size_t index) {
  page += "<h3>config.yaml</h3>\n";
  if (run.config_yaml.empty()) {
    page += "<p>No config.yaml.</p>\n";
    return;
  }
  page += fmt::format("<pre id=\"config-{}\">{}</pre>\n", index + 1, escape_html(run.config_yaml));
}

// One overlaid chart: a series per run.
std::string comparison_chart(const std::vector<RunReport>& runs, const CurveSpec& curve) {
  PlotSpec spec;
  spec.title = std::string(curve.title) + ", all runs";
  spec.x_label = "Epoch";
  spec.y_label = curve.y_label;
  spec.log_y = curve.log_y;
  spec.integer_x = true;
  if (curve.target_line && runs.front().target_dice) {
    const double target = *runs.front().target_dice;
    const bool shared = std::all_of(runs.begin(), runs.end(), [&](const RunReport& run) {
      return run.target_dice && *run.target_dice == target;
    });
    if (shared) {
      spec.horizontal_line = target;
      spec.horizontal_line_label = fmt::format("target {:g}", target);
    }
  }

  // Legend entries are "run N": directory names are too long for the legend
  // and two runs may share one.
  std::vector<Series> series;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const RunReport& run = runs[i];
    Series line;
    line.name = run_label(i);
    for (const ReportEpochRow& row : run.epochs) {
      line.x.push_back(row.epoch);
      line.y.push_back(curve.value(row));
    }
    series.push_back(std::move(line));
  }
  return render_line_plot(spec, series);
}

void append_comparison(std::string& page, const std::vector<RunReport>& runs) {
  page += "<h2 id=\"comparison\">Comparison</h2>\n<table class=\"comparison\" id=\"comparison-table\">\n";
  page += "<tr><th class=\"text\"></th>";
  for (std::size_t i = 0; i < runs.size(); ++i) page += run_column_header(runs, i);
  page += "</tr>\n";
  for (const SummaryField& field : summary_fields()) {
    page += fmt::format("<tr><th class=\"text\">{}</th>", escape_html(field.label));
    for (const RunReport& run : runs) {
      page += fmt::format("<td class=\"text\">{}</td>", escape_html(run.value(field.key)));
    }
    page += "</tr>\n";
  }
  page += "</table>\n";

  page += "<h3>Curves of all runs</h3>\n<div class=\"figures\" id=\"comparison-figures\">\n";
  for (const CurveSpec& curve : comparison_curves()) {
    page += fmt::format("<figure>{}<figcaption>{}</figcaption></figure>\n",
                        svg_img(comparison_chart(runs, curve), curve.title), escape_html(curve.title));
  }
  page += "</div>\n";

  // Each run's own figures, one column per run and one row per figure name.
  std::vector<std::string> names;
  for (const RunReport& run : runs) {
    for (const ReportFile& figure : run.figures) {
      if (std::find(names.begin(), names.end(), figure.name) == names.end()) names.push_back(figure.name);
    }
  }
  page += "<h3>Figures side by side</h3>\n<table class=\"side-by-side\" id=\"side-by-side\">\n<tr>";
  for (std::size_t i = 0; i < runs.size(); ++i) page += run_column_header(runs, i);
  page += "</tr>\n";
  for (const std::string& name : names) {
    page += "<tr>";
    for (const RunReport& run : runs) {
      const auto figure = std::find_if(run.figures.begin(), run.figures.end(),
                                       [&](const ReportFile& file) { return file.name == name; });
      page += figure == run.figures.end()
                  ? fmt::format("<td>{} is missing</td>", escape_html(name))
                  : fmt::format("<td>{}</td>", svg_img(figure->bytes, run.name + ": " + name));
    }
    page += "</tr>\n";
  }
  page += "</table>\n";
}

void append_run_section(std::string& page, const RunReport& run, std::size_t index, bool several_runs) {
  page += fmt::format("<section id=\"{}\">\n", run_anchor(index));
  if (several_runs) page += fmt::format("<h2>Run {}: {}</h2>\n", index + 1, escape_html(run.name));
  page += fmt::format("<p>Directory: <code>{}</code></p>\n", escape_html(run.dir.string()));
  append_warnings(page, run);
  if (!several_runs) {
    page += "<h3>Summary</h3>\n";
    append_summary_table(page, run, index);
    append_figures(page, run, index);
  }
  append_images(page, run, index);
  append_epoch_table(page, run, index);
  append_config(page, run, index);
  page += "</section>\n";
}

}  // namespace

std::string escape_html(std::string_view text) {
  std::string escaped;
  escaped.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t length = utf8_sequence_length(text, i);
    if (length == 0) {
      escaped += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
      ++i;
      continue;
    }
    if (length > 1) {
      escaped.append(text.substr(i, length));
      i += length;
      continue;
    }

    const char c = text[i++];
    switch (c) {
      case '&': escaped += "&amp;"; break;
      case '<': escaped += "&lt;"; break;
      case '>': escaped += "&gt;"; break;
      case '"': escaped += "&quot;"; break;
      case '\'': escaped += "&#39;"; break;
      case '\t':
      case '\n':
      case '\r': escaped += c; break;
      default:
        escaped += (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) ? ' ' : c;
        break;
    }
  }
  return escaped;
}

std::string encode_base64(std::string_view bytes) {
  // EVP_EncodeBlock writes 4 characters per started 3 bytes and a terminating NUL.
  std::string encoded(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int length = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded.data()),
                                     reinterpret_cast<const unsigned char*>(bytes.data()),
                                     static_cast<int>(bytes.size()));
  encoded.resize(static_cast<std::size_t>(length));
  return encoded;
}

std::string data_uri(std::string_view media_type, std::string_view bytes) {
  return fmt::format("data:{};base64,{}", media_type, encode_base64(bytes));
}

std::string build_report_html(const std::vector<RunReport>& runs) {
  if (runs.empty()) throw std::invalid_argument("build_report_html needs at least one run");
  const bool several_runs = runs.size() > 1;
  const std::string title = several_runs ? fmt::format("scaffold report: {} runs", runs.size())
                                         : fmt::format("scaffold report: {}", runs.front().name);

  std::string page;
  page += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  page += fmt::format("<meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\n", kContentSecurityPolicy);
  page += fmt::format("<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n", escape_html(title), kStyle);
  page += fmt::format("<h1>{}</h1>\n", escape_html(title));
  page += fmt::format("<p>Written by scaffold {} ({}) on {}.</p>\n", escape_html(kVersion), escape_html(kGitCommit),
                      utc_now_text());

  if (several_runs) {
    page += "<ol>\n";
    for (std::size_t i = 0; i < runs.size(); ++i) {
      page += fmt::format("<li><a href=\"#{}\">{}</a></li>\n", run_anchor(i), escape_html(runs[i].name));
    }
    page += "</ol>\n";
    append_comparison(page, runs);
  }
  for (std::size_t i = 0; i < runs.size(); ++i) append_run_section(page, runs[i], i, several_runs);

  page += "</body>\n</html>\n";
  return page;
}

void write_report_html(const std::filesystem::path& path, const std::vector<RunReport>& runs) {
  write_file_atomic(path, build_report_html(runs));
}

}  // namespace scaffold
