// Logging through spdlog: "[HH:MM:SS][rank=R][level] message" on stderr.
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace scaffold {

enum class Verbosity { kQuiet, kNormal, kDebug };

// Sets the default spdlog logger's pattern, level and rank tag. Its lines
// pass through write_above_progress_bar (core/progress.hpp).
void setup_logging(Verbosity verbosity, int rank = 0);

// A logger that writes each message alone on its own stderr line, with no
// time, rank or level prefix, at the default logger's level and around the
// progress bar like it. For lines that other tools parse, such as ":::MLLOG".
std::shared_ptr<spdlog::logger> make_plain_stderr_logger(const std::string& name);

}  // namespace scaffold
