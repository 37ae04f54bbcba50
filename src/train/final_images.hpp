// Slice images with the trained model's prediction: the end-of-training images
// of a benchmark run (<run>/images/val_<id>.png) and the model loading and
// inference behind `scaffold show RUN_DIR`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "core/config.hpp"
#include "dataset/dataset.hpp"
#include "nn/unet.hpp"

namespace scaffold {

// Validation volumes drawn at the end of training. Each costs one forward pass.
inline constexpr int kFinalImageVolumes = 2;

// A run directory without checkpoint_best.pt or checkpoint_last.pt.
class NoCheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A U-Net in eval mode with the weights of one checkpoint.
struct TrainedModel {
  UNet model{nullptr};
  std::filesystem::path checkpoint;
  int epoch = 0;          // last completed epoch stored in the checkpoint
  double val_dice = 0;    // validation Dice of that epoch
};

// Builds the network of `config` for `n_classes` classes and loads
// checkpoint_best.pt from <run_dir>/<checkpoint_dir>/, or checkpoint_last.pt
// when the best one is missing or unreadable (a warning names the file and
// the reason). Unlike resuming, it renames no file. Throws NoCheckpointError
// when neither file exists, CheckpointError when none can be read, and
// std::runtime_error when a checkpoint belongs to another config or model.
// Loading also restores the torch CPU generator state stored in the file.
TrainedModel load_trained_model(const Config& config, int n_classes, const std::filesystem::path& run_dir);

// Returns the predicted class of every voxel, uint16 [D, H, W] (argmax of the
// logits, lowest class on ties), for one volume float32 [3, D, H, W] of edge
// `vol_size`.
std::vector<std::uint16_t> predict_mask(UNet& model, const std::vector<float>& volume, int vol_size);

// Returns the hard foreground Dice of a predicted mask against the true mask,
// with the validation metric's rules (hard_dice_per_sample).
double mask_dice(const std::vector<std::uint16_t>& predicted, const std::vector<std::uint16_t>& truth,
                 int vol_size, int n_classes);

// Writes <run_dir>/images/val_<id>.png for the first kFinalImageVolumes
// validation volumes: volume, true mask and the prediction of the run's best
// checkpoint side by side. Without a checkpoint (checkpoint_interval -1) the
// prediction comes from `final_model` (the weights at the end of training), or
// the images show the volume and true mask only when it is null. Logs the files, each prediction's
// Dice and the time taken. Logs a warning instead of throwing, because it runs
// after result.json is written and must not fail a finished benchmark.
// Returns the written paths.
std::vector<std::filesystem::path> write_final_images(const Config& config, const DatasetInfo& dataset,
                                                      const std::filesystem::path& run_dir,
                                                      UNet* final_model = nullptr);

}  // namespace scaffold
