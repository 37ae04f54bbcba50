// PNG overview images of one sample: orthogonal middle slices and a
// maximum-intensity projection of the volume, its true mask and optionally a
// predicted mask, side by side.
//
// Layout: a grid of square cells separated and framed by kPanelGapPx pixels of
// grey. Rows, top to bottom, are the PanelRow values; columns, left to right,
// are the PanelColumn values (the prediction column only when a prediction is
// given). Each panel starts at its cell's top-left corner and shows every voxel
// as a scale x scale block, with the panel row index running downwards.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace scaffold {

struct Rgb {
  std::uint8_t r = 0;
  std::uint8_t g = 0;
  std::uint8_t b = 0;

  bool operator==(const Rgb&) const = default;
};

// Number of colours before class_colour repeats.
inline constexpr int kClassPaletteSize = 12;

// Colour of a mask class: black for class 0 (background), and for classes
// 1, 2, ... a fixed palette of kClassPaletteSize saturated colours, none black
// or grey, repeating after that.
Rgb class_colour(int class_index);

// Colour of the frame and the gaps between panels.
inline constexpr Rgb kPanelGapColour = {96, 96, 96};
inline constexpr int kPanelGapPx = 4;

// Smallest panel edge the upscaling aims for, in pixels.
inline constexpr int kMinPanelPx = 128;

// Extents of a [D, H, W] volume in voxels.
struct VolumeShape {
  int depth = 0;
  int height = 0;
  int width = 0;
};

enum class PanelRow {
  kSliceDepth = 0,       // d = depth / 2; panel rows are h, columns are w
  kSliceHeight = 1,      // h = height / 2; panel rows are d, columns are w
  kSliceWidth = 2,       // w = width / 2; panel rows are d, columns are h
  kProjectionDepth = 3,  // maximum over d; panel rows are h, columns are w
};
inline constexpr int kPanelRowCount = 4;

enum class PanelColumn {
  kVolume = 0,         // the volume's three channels as RGB
  kTrueMask = 1,       // class colours of the true mask
  kPredictedMask = 2,  // class colours of the predicted mask
};

struct PixelPosition {
  int x = 0;
  int y = 0;
};

struct SliceImageLayout {
  VolumeShape shape;
  int scale = 1;    // pixels per voxel edge
  int cell_px = 0;  // edge of the square cell that contains one panel
  int columns = 2;  // 3 when a predicted mask is shown
  int width_px = 0;
  int height_px = 0;

  // Top-left pixel of the scale x scale block that shows the voxel at
  // (panel_row, panel_col) of a panel. PanelRow lists the volume axes of each row.
  PixelPosition voxel_pixel(PanelRow row, PanelColumn column, int panel_row, int panel_col) const;
};

// Layout for a volume of `shape`. The scale is the smallest integer that makes
// the longest edge at least kMinPanelPx pixels (1 for edges of kMinPanelPx or more).
// Throws std::invalid_argument for a non-positive extent.
SliceImageLayout slice_image_layout(VolumeShape shape, bool with_prediction);

// An 8-bit RGB image, rows top to bottom, 3 bytes per pixel.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;

  Rgb at(int x, int y) const;
};

// Draws the overview image. `volume` is float32 [3, D, H, W] with values in
// [0, 1] (values outside are clamped and NaN shows as 0), `true_mask` is uint16
// [D, H, W], and `predicted_mask` is empty or uint16 [D, H, W]. In the
// projection row the volume shows the maximum of each channel along D and a
// mask shows its largest class index along D, so any foreground is visible.
// Throws std::invalid_argument naming the buffer whose size does not match `shape`.
RgbImage render_slice_image(VolumeShape shape, std::span<const float> volume,
                            std::span<const std::uint16_t> true_mask,
                            std::span<const std::uint16_t> predicted_mask = {});

// Encodes an 8-bit RGB PNG (zlib-compressed by stb_image_write). Throws
// std::runtime_error when encoding fails.
std::vector<std::byte> encode_png(const RgbImage& image);

// Renders, encodes and writes the image to `path` atomically. Throws as
// render_slice_image and encode_png do, and IoError when the file cannot be written.
void write_slice_image(const std::filesystem::path& path, VolumeShape shape, std::span<const float> volume,
                       std::span<const std::uint16_t> true_mask,
                       std::span<const std::uint16_t> predicted_mask = {});

}  // namespace scaffold
