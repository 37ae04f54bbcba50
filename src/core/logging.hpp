// Logging through spdlog: "[HH:MM:SS][rank=R][level] message" on stderr.
#pragma once

#include <spdlog/spdlog.h>

namespace scaffold {

enum class Verbosity { kQuiet, kNormal, kDebug };

// Sets the default spdlog logger's pattern, level and rank tag.
void setup_logging(Verbosity verbosity, int rank = 0);

}  // namespace scaffold
