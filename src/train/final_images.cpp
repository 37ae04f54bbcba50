#include "train/final_images.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "core/logging.hpp"
#include "report/slice_images.hpp"
#include "train/checkpoint.hpp"
#include "train/loss.hpp"
#include "train/schedule.hpp"

namespace scaffold {

namespace fs = std::filesystem;

namespace {

ConvBackend conv_backend(const Config& config) {
  return config.conv_backend == "libtorch" ? ConvBackend::libtorch : ConvBackend::onednn;
}

// A [1, D, H, W] int64 tensor holding a copy of a uint16 mask.
torch::Tensor mask_tensor(const std::vector<std::uint16_t>& mask, int vol_size) {
  const torch::Tensor values = torch::tensor(std::vector<std::int64_t>(mask.begin(), mask.end()), torch::kInt64);
  return values.reshape({1, vol_size, vol_size, vol_size});
}

// Logits [1, n_classes, D, H, W] with a large value at each voxel's class, so
// that the argmax reproduces `mask` exactly.
torch::Tensor one_hot_logits(const std::vector<std::uint16_t>& mask, int vol_size, int n_classes) {
  const torch::Tensor labels = mask_tensor(mask, vol_size);
  return torch::one_hot(labels, n_classes).permute({0, 4, 1, 2, 3}).to(torch::kFloat32);
}

VolumeShape cube(int vol_size) { return {vol_size, vol_size, vol_size}; }

}  // namespace

TrainedModel load_trained_model(const Config& config, int n_classes, const fs::path& run_dir) {
  const fs::path dir = checkpoint_dir(config, run_dir);
  const fs::path best = dir / "checkpoint_best.pt";
  const fs::path last = dir / "checkpoint_last.pt";
  if (!fs::exists(best) && !fs::exists(last)) {
    throw NoCheckpointError(fmt::format(
        "run {} has no checkpoint: neither {} nor {} exists (the run used checkpoint_interval -1 or stopped before "
        "its first checkpoint); train with checkpoint_interval > 0 to get predictions",
        run_dir.string(), best.string(), last.string()));
  }

  TrainedModel trained;
  trained.model = UNet(3, n_classes, config.unet_layers(), config.group_norm_groups, conv_backend(config));
  const CheckpointIdentity identity = checkpoint_identity(config, trained.model);
  // load_checkpoint also restores optimizer state, which inference does not use.
  const auto optimizer =
      make_optimizer(config.optimizer, trained.model->parameters(), config.starting_learning_rate);

  std::string failures;
  for (const fs::path& path : {best, last}) {
    if (!fs::exists(path)) continue;
    try {
      const TrainingProgress progress = load_checkpoint(path, trained.model, *optimizer, identity);
      trained.checkpoint = path;
      trained.epoch = progress.epoch;
      trained.val_dice = progress.val_dice;
      trained.model->eval();
      return trained;
    } catch (const CheckpointError& error) {
      spdlog::warn("{}; trying the next checkpoint", error.what());
      failures += fmt::format("{}{}", failures.empty() ? "" : "; ", error.what());
    }
  }
  throw CheckpointError(fmt::format("no readable checkpoint in {}: {}", dir.string(), failures));
}

std::vector<std::uint16_t> predict_mask(UNet& model, const std::vector<float>& volume, int vol_size) {
  const std::int64_t g = vol_size;
  if (static_cast<std::int64_t>(volume.size()) != 3 * g * g * g) {
    throw std::invalid_argument(fmt::format("volume has {} values, but a [3, {}, {}, {}] volume needs {}",
                                            volume.size(), g, g, g, 3 * g * g * g));
  }

  torch::NoGradGuard no_grad;
  model->eval();
  // input: [1, 3, D, H, W]; logits: [1, n_classes, D, H, W]; labels: [D, H, W]
  const torch::Tensor input = torch::tensor(volume, torch::kFloat32).reshape({1, 3, g, g, g});
  const torch::Tensor logits = model->forward(input);
  const torch::Tensor labels = logits.argmax(1).squeeze(0).to(torch::kInt32).contiguous();

  std::vector<std::uint16_t> mask(static_cast<std::size_t>(labels.numel()));
  const std::int32_t* data = labels.data_ptr<std::int32_t>();
  std::transform(data, data + labels.numel(), mask.begin(),
                 [](std::int32_t label) { return static_cast<std::uint16_t>(label); });
  return mask;
}

double mask_dice(const std::vector<std::uint16_t>& predicted, const std::vector<std::uint16_t>& truth, int vol_size,
                 int n_classes) {
  const torch::Tensor logits = one_hot_logits(predicted, vol_size, n_classes);
  return hard_dice_per_sample(logits, mask_tensor(truth, vol_size))[0].item<double>();
}

std::vector<fs::path> write_final_images(const Config& config, const DatasetInfo& dataset, const fs::path& run_dir,
                                         UNet* final_model) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<fs::path> written;
  try {
    std::optional<TrainedModel> trained;
    try {
      trained = load_trained_model(config, dataset.n_classes, run_dir);
      spdlog::info("slice images: predicting with {} (epoch {}, validation Dice {:.4f})",
                   trained->checkpoint.string(), trained->epoch, trained->val_dice);
    } catch (const NoCheckpointError&) {
      if (final_model != nullptr) {
        trained.emplace();
        trained->model = *final_model;
        trained->model->eval();
        spdlog::info("slice images: no checkpoint (checkpoint_interval is {}), predicting with the final weights",
                     config.checkpoint_interval);
      } else {
        spdlog::info("slice images: no checkpoint (checkpoint_interval is {}), so the images show the volume and "
                     "true mask without a prediction",
                     config.checkpoint_interval);
      }
    }

    const fs::path images_dir = run_dir / "images";
    fs::create_directories(images_dir);
    const std::size_t count = std::min<std::size_t>(kFinalImageVolumes, dataset.val_ids.size());
    for (std::size_t i = 0; i < count; ++i) {
      const int id = dataset.val_ids[i];
      const Sample sample = load_sample(dataset, Split::kValidation, id);
      const fs::path path = images_dir / fmt::format("val_{}.png", id);
      if (trained) {
        const std::vector<std::uint16_t> predicted = predict_mask(trained->model, sample.volume, dataset.vol_size);
        write_slice_image(path, cube(dataset.vol_size), sample.volume, sample.mask, predicted);
        spdlog::info("slice images: {} (prediction Dice {:.4f})", path.string(),
                     mask_dice(predicted, sample.mask, dataset.vol_size, dataset.n_classes));
      } else {
        write_slice_image(path, cube(dataset.vol_size), sample.volume, sample.mask);
        spdlog::info("slice images: {}", path.string());
      }
      written.push_back(path);
    }
  } catch (const std::exception& error) {
    spdlog::warn("slice images of the validation volumes were not written: {}", error.what());
  }

  if (final_model != nullptr) {
    (*final_model)->train();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("slice images: {} written in {:.2f} s", written.size(), seconds);
  return written;
}

}  // namespace scaffold
