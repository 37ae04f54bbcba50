#include "core/logging.hpp"

#include <spdlog/sinks/sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <memory>
#include <string>
#include <utility>

#include "core/progress.hpp"

namespace scaffold {

namespace {

// Erases the progress bar before each log line and redraws it after.
class ProgressAwareSink final : public spdlog::sinks::sink {
 public:
  explicit ProgressAwareSink(std::shared_ptr<spdlog::sinks::sink> inner) : inner_(std::move(inner)) {}

  void log(const spdlog::details::log_msg& message) override {
    write_above_progress_bar([&] {
      inner_->log(message);
      inner_->flush();
    });
  }
  void flush() override { inner_->flush(); }
  void set_pattern(const std::string& pattern) override { inner_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
    inner_->set_formatter(std::move(formatter));
  }

 private:
  std::shared_ptr<spdlog::sinks::sink> inner_;
};

std::shared_ptr<spdlog::sinks::sink> make_stderr_sink() {
  return std::make_shared<ProgressAwareSink>(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
}

}  // namespace

void setup_logging(Verbosity verbosity, int rank) {
  auto logger = std::make_shared<spdlog::logger>("scaffold", make_stderr_sink());

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

std::shared_ptr<spdlog::logger> make_plain_stderr_logger(const std::string& name) {
  auto logger = std::make_shared<spdlog::logger>(name, make_stderr_sink());
  logger->set_pattern("%v");
  logger->set_level(spdlog::default_logger()->level());
  return logger;
}

}  // namespace scaffold
