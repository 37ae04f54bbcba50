#include "core/logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <memory>
#include <string>

namespace scaffold {

void setup_logging(Verbosity verbosity, int rank) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("scaffold", sink);

  logger->set_pattern("[%H:%M:%S][rank=" + std::to_string(rank) + "][%l] %v");
  switch (verbosity) {
    case Verbosity::kQuiet:
      logger->set_level(spdlog::level::warn);
      break;
    case Verbosity::kNormal:
      logger->set_level(spdlog::level::info);
      break;
    case Verbosity::kDebug:
      logger->set_level(spdlog::level::debug);
      break;
  }

  spdlog::set_default_logger(std::move(logger));
}

}  // namespace scaffold
