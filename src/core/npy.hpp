// NumPy .npy format version 1.0 reading and writing (little-endian, C order).
// numpy.load opens every file written here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/atomic_file.hpp"

namespace scaffold {

// A malformed or unexpected .npy file; the message names the file and the defect.
class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DType { kFloat32, kFloat64, kUInt16, kInt16, kInt64, kUInt8 };

const char* dtype_descr(DType dtype);    // "<f4", "<f8", "<u2", "<i2", "<i8", "|u1"
std::size_t dtype_size(DType dtype);

struct NpyArray {
  DType dtype = DType::kFloat32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;  // C order, little-endian

  std::int64_t element_count() const;
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data.data()); }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(data.data()); }
};

// Builds the complete file image (header padded to a multiple of 64 bytes, then data).
// Throws std::invalid_argument for a negative extent, or for null data when the shape has elements.
std::vector<std::byte> encode_npy(DType dtype, const std::vector<std::int64_t>& shape, const void* data);

// Writes atomically (temporary file, fsync unless `sync` is kDeferred, rename).
// Fault points (core/fault_injection.hpp): "npy_write", then `write_fault` when
// given, at write_file_atomic's "atomic_write" position.
void write_npy(const std::filesystem::path& path, DType dtype, const std::vector<std::int64_t>& shape,
               const void* data, const char* write_fault = nullptr, Sync sync = Sync::kNow);

// The checked header of a .npy file.
struct NpyHeader {
  DType dtype = DType::kFloat32;
  std::vector<std::int64_t> shape;
  std::uint64_t data_offset = 0;  // bytes before the data
};

// Reads and checks the header as read_npy does, including that the file size
// matches it, without reading the data.
NpyHeader read_npy_header(const std::filesystem::path& path);

// As read_npy_header, and also requires the given dtype and shape (-1 matches any extent).
NpyHeader read_npy_header_checked(const std::filesystem::path& path, DType dtype,
                                  const std::vector<std::int64_t>& shape);

// Reads and checks magic, version (1.0, 2.0 or 3.0), dtype, order and that the
// file size matches the header. Throws NpyError naming the path and the defect,
// or IoError when the file cannot be opened or read.
NpyArray read_npy(const std::filesystem::path& path);

// As read_npy, and also requires the given dtype and shape (-1 matches any extent).
NpyArray read_npy_checked(const std::filesystem::path& path, DType dtype, const std::vector<std::int64_t>& shape);

}  // namespace scaffold
