#include "report/slice_images.hpp"

// Debian's libstb-dev ships the compiled implementation in libstb, so this
// file includes only the declarations and links -lstb.
#include <stb/stb_image_write.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/atomic_file.hpp"

namespace scaffold {

namespace {

// Twelve saturated colours, ordered so that neighbouring classes differ in hue.
constexpr std::array<Rgb, kClassPaletteSize> kClassPalette = {{
    {255, 0, 0},      // red
    {0, 200, 0},      // green
    {40, 90, 255},    // blue
    {255, 220, 0},    // yellow
    {0, 220, 220},    // cyan
    {230, 0, 230},    // magenta
    {255, 130, 0},    // orange
    {140, 60, 255},   // violet
    {150, 255, 80},   // lime
    {255, 120, 180},  // pink
    {0, 130, 130},    // teal
    {170, 110, 40},   // brown
}};

// Extent of a panel in voxels: (panel rows, panel columns).
std::pair<int, int> panel_extent(PanelRow row, VolumeShape shape) {
  switch (row) {
    case PanelRow::kSliceDepth:
    case PanelRow::kProjectionDepth: return {shape.height, shape.width};
    case PanelRow::kSliceHeight: return {shape.depth, shape.width};
    case PanelRow::kSliceWidth: return {shape.depth, shape.height};
  }
  throw std::invalid_argument("unknown panel row");
}

std::uint8_t channel_byte(float value) {
  if (!(value > 0)) return 0;  // also maps NaN to 0
  if (value >= 1) return 255;
  return static_cast<std::uint8_t>(std::lround(value * 255.0f));
}

void check_buffer_size(const char* name, std::size_t actual, std::size_t expected, VolumeShape shape,
                       const char* layout) {
  if (actual == expected) return;
  throw std::invalid_argument(fmt::format("{} has {} elements but shape {} x {} x {} needs {} ({}); pass the "
                                          "buffer that matches the volume's shape",
                                          name, actual, shape.depth, shape.height, shape.width, expected, layout));
}

// Reads the volume and masks at the panel coordinates of each row.
class SampleView {
 public:
  SampleView(VolumeShape shape, std::span<const float> volume, std::span<const std::uint16_t> true_mask,
             std::span<const std::uint16_t> predicted_mask)
      : shape_(shape), volume_(volume), true_mask_(true_mask), predicted_mask_(predicted_mask) {}

  Rgb colour(PanelRow row, PanelColumn column, int panel_row, int panel_col) const {
    if (row == PanelRow::kProjectionDepth) return projected_colour(column, panel_row, panel_col);

    const std::size_t voxel = voxel_index(row, panel_row, panel_col);
    switch (column) {
      case PanelColumn::kVolume: return volume_colour(voxel);
      case PanelColumn::kTrueMask: return class_colour(true_mask_[voxel]);
      case PanelColumn::kPredictedMask: return class_colour(predicted_mask_[voxel]);
    }
    throw std::invalid_argument("unknown panel column");
  }

 private:
  std::size_t voxel_count() const {
    return static_cast<std::size_t>(shape_.depth) * shape_.height * shape_.width;
  }

  std::size_t index(int d, int h, int w) const {
    return (static_cast<std::size_t>(d) * shape_.height + h) * shape_.width + w;
  }

  std::size_t voxel_index(PanelRow row, int panel_row, int panel_col) const {
    switch (row) {
      case PanelRow::kSliceDepth: return index(shape_.depth / 2, panel_row, panel_col);
      case PanelRow::kSliceHeight: return index(panel_row, shape_.height / 2, panel_col);
      case PanelRow::kSliceWidth: return index(panel_row, panel_col, shape_.width / 2);
      case PanelRow::kProjectionDepth: break;
    }
    throw std::invalid_argument("voxel_index has no single voxel for a projection row");
  }

  Rgb volume_colour(std::size_t voxel) const {
    const std::size_t channel_stride = voxel_count();
    return {channel_byte(volume_[voxel]), channel_byte(volume_[channel_stride + voxel]),
            channel_byte(volume_[2 * channel_stride + voxel])};
  }

  Rgb projected_colour(PanelColumn column, int h, int w) const {
    if (column == PanelColumn::kVolume) {
      std::array<float, 3> maximum = {0, 0, 0};
      for (int d = 0; d < shape_.depth; ++d) {
        for (std::size_t channel = 0; channel < 3; ++channel) {
          const float value = volume_[channel * voxel_count() + index(d, h, w)];
          if (value > maximum[channel]) maximum[channel] = value;
        }
      }
      return {channel_byte(maximum[0]), channel_byte(maximum[1]), channel_byte(maximum[2])};
    }

    const std::span<const std::uint16_t> mask = column == PanelColumn::kTrueMask ? true_mask_ : predicted_mask_;
    std::uint16_t largest = 0;
    for (int d = 0; d < shape_.depth; ++d) largest = std::max(largest, mask[index(d, h, w)]);
    return class_colour(largest);
  }

  VolumeShape shape_;
  std::span<const float> volume_;
  std::span<const std::uint16_t> true_mask_;
  std::span<const std::uint16_t> predicted_mask_;
};

void fill_block(RgbImage& image, PixelPosition origin, int scale, Rgb colour) {
  for (int y = origin.y; y < origin.y + scale; ++y) {
    std::uint8_t* pixel = image.pixels.data() + (static_cast<std::size_t>(y) * image.width + origin.x) * 3;
    for (int x = 0; x < scale; ++x) {
      pixel[0] = colour.r;
      pixel[1] = colour.g;
      pixel[2] = colour.b;
      pixel += 3;
    }
  }
}

// stb_image_write's output callback: appends each chunk of PNG bytes to a vector.
void append_png_bytes(void* context, void* data, int size) {
  auto* bytes = static_cast<std::vector<std::byte>*>(context);
  const auto* chunk = static_cast<const std::byte*>(data);
  bytes->insert(bytes->end(), chunk, chunk + size);
}

}  // namespace

Rgb class_colour(int class_index) {
  if (class_index <= 0) return {0, 0, 0};
  return kClassPalette[static_cast<std::size_t>(class_index - 1) % kClassPalette.size()];
}

PixelPosition SliceImageLayout::voxel_pixel(PanelRow row, PanelColumn column, int panel_row, int panel_col) const {
  const int cell_x = kPanelGapPx + static_cast<int>(column) * (cell_px + kPanelGapPx);
  const int cell_y = kPanelGapPx + static_cast<int>(row) * (cell_px + kPanelGapPx);
  return {cell_x + panel_col * scale, cell_y + panel_row * scale};
}

SliceImageLayout slice_image_layout(VolumeShape shape, bool with_prediction) {
  if (shape.depth <= 0 || shape.height <= 0 || shape.width <= 0) {
    throw std::invalid_argument(fmt::format("invalid volume shape {} x {} x {} for a slice image; every extent must "
                                            "be positive",
                                            shape.depth, shape.height, shape.width));
  }

  SliceImageLayout layout;
  layout.shape = shape;
  const int longest_edge = std::max({shape.depth, shape.height, shape.width});
  layout.scale = std::max(1, (kMinPanelPx + longest_edge - 1) / longest_edge);
  layout.cell_px = longest_edge * layout.scale;
  layout.columns = with_prediction ? 3 : 2;
  layout.width_px = layout.columns * layout.cell_px + (layout.columns + 1) * kPanelGapPx;
  layout.height_px = kPanelRowCount * layout.cell_px + (kPanelRowCount + 1) * kPanelGapPx;
  return layout;
}

Rgb RgbImage::at(int x, int y) const {
  if (x < 0 || y < 0 || x >= width || y >= height) {
    throw std::out_of_range(fmt::format("pixel ({}, {}) is outside the {} x {} image", x, y, width, height));
  }
  const std::uint8_t* pixel = pixels.data() + (static_cast<std::size_t>(y) * width + x) * 3;
  return {pixel[0], pixel[1], pixel[2]};
}

RgbImage render_slice_image(VolumeShape shape, std::span<const float> volume,
                            std::span<const std::uint16_t> true_mask,
                            std::span<const std::uint16_t> predicted_mask) {
  const bool with_prediction = !predicted_mask.empty();
  const SliceImageLayout layout = slice_image_layout(shape, with_prediction);

  const std::size_t voxels = static_cast<std::size_t>(shape.depth) * shape.height * shape.width;
  check_buffer_size("volume", volume.size(), 3 * voxels, shape, "float32 [3, D, H, W]");
  check_buffer_size("true mask", true_mask.size(), voxels, shape, "uint16 [D, H, W]");
  if (with_prediction) check_buffer_size("predicted mask", predicted_mask.size(), voxels, shape, "uint16 [D, H, W]");

  // Start from the gap colour, which also fills the unused part of a cell
  // when the volume is not a cube.
  RgbImage image;
  image.width = layout.width_px;
  image.height = layout.height_px;
  image.pixels.resize(static_cast<std::size_t>(image.width) * image.height * 3);
  for (std::size_t i = 0; i < image.pixels.size(); i += 3) {
    image.pixels[i] = kPanelGapColour.r;
    image.pixels[i + 1] = kPanelGapColour.g;
    image.pixels[i + 2] = kPanelGapColour.b;
  }

  const SampleView view(shape, volume, true_mask, predicted_mask);
  for (int row_index = 0; row_index < kPanelRowCount; ++row_index) {
    const auto row = static_cast<PanelRow>(row_index);
    const auto [panel_rows, panel_cols] = panel_extent(row, shape);
    for (int column_index = 0; column_index < layout.columns; ++column_index) {
      const auto column = static_cast<PanelColumn>(column_index);
      for (int i = 0; i < panel_rows; ++i) {
        for (int j = 0; j < panel_cols; ++j) {
          fill_block(image, layout.voxel_pixel(row, column, i, j), layout.scale, view.colour(row, column, i, j));
        }
      }
    }
  }
  return image;
}

std::vector<std::byte> encode_png(const RgbImage& image) {
  const std::size_t expected_bytes = static_cast<std::size_t>(image.width) * image.height * 3;
  if (image.width <= 0 || image.height <= 0 || image.pixels.size() != expected_bytes) {
    throw std::invalid_argument(fmt::format("cannot encode a {} x {} RGB image from {} bytes; it needs {}",
                                            image.width, image.height, image.pixels.size(), expected_bytes));
  }

  std::vector<std::byte> png;
  const int ok = stbi_write_png_to_func(append_png_bytes, &png, image.width, image.height, 3, image.pixels.data(),
                                        image.width * 3);
  if (ok == 0) {
    throw std::runtime_error(
        fmt::format("stbi_write_png_to_func failed for a {} x {} RGB image", image.width, image.height));
  }
  return png;
}

void write_slice_image(const std::filesystem::path& path, VolumeShape shape, std::span<const float> volume,
                       std::span<const std::uint16_t> true_mask, std::span<const std::uint16_t> predicted_mask) {
  const RgbImage image = render_slice_image(shape, volume, true_mask, predicted_mask);
  const std::vector<std::byte> png = encode_png(image);
  write_file_atomic(path, std::span<const std::byte>(png));
}

}  // namespace scaffold
