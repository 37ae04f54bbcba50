// The HTML report of one or more benchmark runs: one self-contained page with
// the summary, figures, slice images, per-epoch table and config of each run,
// and for several runs a comparison with one column per run and overlaid
// curves.
//
// The page loads nothing: figures and images are base64 data URIs, the style
// sheet is inline, and it has no script. Its Content-Security-Policy allows
// only data: images and the inline style, so a browser refuses (and reports
// on its console) any other resource. SVG figures are embedded as <img>
// rather than as inline <svg> markup, so a figure file cannot inject markup or
// scripts into the page and the element ids of different figures cannot clash.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "report/run_report.hpp"

namespace scaffold {

// Text with &, <, >, " and ' replaced by character references, control
// characters other than tab, newline and carriage return replaced by spaces,
// and invalid UTF-8 replaced by U+FFFD, so that it is safe in element content
// and in quoted attribute values.
std::string escape_html(std::string_view text);

// Standard base64 (RFC 4648, with padding, no line breaks).
std::string encode_base64(std::string_view bytes);

// "data:<media_type>;base64,<bytes in base64>".
std::string data_uri(std::string_view media_type, std::string_view bytes);

// Builds the page for `runs` (at least one). The output is UTF-8.
// Throws std::invalid_argument when `runs` is empty.
std::string build_report_html(const std::vector<RunReport>& runs);

// Builds the page and writes it to `path` atomically.
void write_report_html(const std::filesystem::path& path, const std::vector<RunReport>& runs);

}  // namespace scaffold
