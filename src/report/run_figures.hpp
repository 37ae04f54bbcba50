// The training curves of a run as SVG files in <run>/figures/, redrawn from
// all epochs so far. One call writes five small files, so the trainer can call
// it after every epoch.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace scaffold {

// The per-epoch values that the figures show. The fields match the columns of
// train_stats.csv where one exists. NaN marks a value that is missing, which
// leaves a gap in that curve.
struct EpochFigureRow {
  int epoch = 0;
  double overall_loss = 0;      // mean training loss per sample
  double val_loss_avg = 0;      // mean validation loss per sample
  double val_dice = 0;          // mean hard foreground Dice per validation sample
  double learning_rate = 0;     // learning rate used during the epoch
  double epoch_duration_s = 0;  // wall time of training plus validation
};

// Run settings that go into the figure titles and the Dice target line.
struct FigureContext {
  int vol_size = 0;      // voxels per volume edge
  int n_categories = 0;  // fractal classes, not counting the background
  int unet_layers = 0;
  double target_dice = 0.95;
};

// "v=<vol_size>, c=<n_categories>, u=<unet_layers>", the reference's figure title.
std::string figure_title_suffix(const FigureContext& context);

// File names written into <run>/figures/, in the order write_run_figures writes them.
std::vector<std::string> run_figure_names();

// Writes train_loss.svg (log y), val_dice.svg (with the target as a dashed
// line), val_loss.svg, learning_rate.svg and epoch_time.svg into
// <run_dir>/figures/, creating that folder, each file replaced atomically.
// Returns the written paths. Throws std::invalid_argument for an invalid
// context value, std::filesystem::filesystem_error when the folder cannot be
// created, and IoError when a file cannot be written.
std::vector<std::filesystem::path> write_run_figures(const std::filesystem::path& run_dir,
                                                     const std::vector<EpochFigureRow>& rows,
                                                     const FigureContext& context);

}  // namespace scaffold
