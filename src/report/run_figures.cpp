#include "report/run_figures.hpp"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "core/atomic_file.hpp"
#include "report/svg_plot.hpp"

namespace scaffold {

namespace {

void validate_context(const FigureContext& context) {
  if (context.vol_size <= 0 || context.n_categories <= 0 || context.unet_layers < 0) {
    throw std::invalid_argument(fmt::format(
        "invalid figure context vol_size={}, n_categories={}, unet_layers={}; vol_size and n_categories must be "
        "positive and unet_layers must not be negative",
        context.vol_size, context.n_categories, context.unet_layers));
  }
  if (!std::isfinite(context.target_dice) || context.target_dice <= 0 || context.target_dice > 1) {
    throw std::invalid_argument(
        fmt::format("invalid target_dice {} for the Dice figure; it must lie in (0, 1]", context.target_dice));
  }
}

// One single-series chart of `value` against the epoch.
std::string render_epoch_plot(const std::vector<EpochFigureRow>& rows, double EpochFigureRow::*value,
                              PlotSpec spec, const std::string& series_name) {
  Series series;
  series.name = series_name;
  series.x.reserve(rows.size());
  series.y.reserve(rows.size());
  for (const EpochFigureRow& row : rows) {
    series.x.push_back(row.epoch);
    series.y.push_back(row.*value);
  }

  spec.x_label = "Epoch";
  spec.integer_x = true;
  return render_line_plot(spec, {series});
}

}  // namespace

std::string figure_title_suffix(const FigureContext& context) {
  return fmt::format("v={}, c={}, u={}", context.vol_size, context.n_categories, context.unet_layers);
}

std::vector<std::string> run_figure_names() {
  return {"train_loss.svg", "val_dice.svg", "val_loss.svg", "learning_rate.svg", "epoch_time.svg"};
}

std::vector<std::filesystem::path> write_run_figures(const std::filesystem::path& run_dir,
                                                     const std::vector<EpochFigureRow>& rows,
                                                     const FigureContext& context) {
  validate_context(context);
  const std::string suffix = figure_title_suffix(context);

  PlotSpec train_loss;
  train_loss.title = "Training loss (" + suffix + ")";
  train_loss.y_label = "Loss per sample";
  train_loss.log_y = true;

  PlotSpec val_dice;
  val_dice.title = "Validation Dice (" + suffix + ")";
  val_dice.y_label = "Dice";
  val_dice.horizontal_line = context.target_dice;
  val_dice.horizontal_line_label = fmt::format("target {:g}", context.target_dice);

  PlotSpec val_loss;
  val_loss.title = "Validation loss (" + suffix + ")";
  val_loss.y_label = "Loss per sample";

  PlotSpec learning_rate;
  learning_rate.title = "Learning rate (" + suffix + ")";
  learning_rate.y_label = "Learning rate";

  PlotSpec epoch_time;
  epoch_time.title = "Epoch time (" + suffix + ")";
  epoch_time.y_label = "Seconds";

  // Same order as run_figure_names().
  const std::vector<std::string> documents = {
      render_epoch_plot(rows, &EpochFigureRow::overall_loss, train_loss, "training loss"),
      render_epoch_plot(rows, &EpochFigureRow::val_dice, val_dice, "validation Dice"),
      render_epoch_plot(rows, &EpochFigureRow::val_loss_avg, val_loss, "validation loss"),
      render_epoch_plot(rows, &EpochFigureRow::learning_rate, learning_rate, "learning rate"),
      render_epoch_plot(rows, &EpochFigureRow::epoch_duration_s, epoch_time, "epoch time"),
  };

  const std::filesystem::path figures_dir = run_dir / "figures";
  std::filesystem::create_directories(figures_dir);

  const std::vector<std::string> names = run_figure_names();
  std::vector<std::filesystem::path> written;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::filesystem::path path = figures_dir / names[i];
    write_file_atomic(path, documents[i]);
    written.push_back(path);
  }
  return written;
}

}  // namespace scaffold
