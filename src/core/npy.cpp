#include "core/npy.hpp"

#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>

namespace scaffold {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;
constexpr std::size_t kHeaderAlignment = 64;

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    // -1 in an expected shape matches any extent.
    text += shape[i] == -1 ? std::string("any") : std::to_string(shape[i]);
  }
  // A one-element tuple needs its trailing comma in Python syntax.
  if (shape.size() == 1) text += ",";
  return text + ")";
}

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& defect) {
  throw NpyError("invalid .npy file " + path.string() + ": " + defect +
                 "; regenerate the file or remove it so that it is rebuilt");
}

// Size in bytes of an array of `shape`, or nullopt when an extent is negative or the size overflows.
std::optional<std::uint64_t> byte_count(const std::vector<std::int64_t>& shape, std::size_t item_size) {
  std::uint64_t bytes = item_size;
  for (const std::int64_t extent : shape) {
    if (extent < 0) return std::nullopt;
    const auto extent_u = static_cast<std::uint64_t>(extent);
    if (extent_u != 0 && bytes > std::numeric_limits<std::uint64_t>::max() / extent_u) return std::nullopt;
    bytes *= extent_u;
  }
  return bytes;
}

std::optional<DType> dtype_from_descr(const std::string& descr) {
  if (descr == "<f4") return DType::kFloat32;
  if (descr == "<f8") return DType::kFloat64;
  if (descr == "<u2") return DType::kUInt16;
  if (descr == "<i2") return DType::kInt16;
  if (descr == "<i8") return DType::kInt64;
  // Byte order does not apply to one-byte items, and numpy itself writes "|u1".
  if (descr == "|u1" || descr == "<u1" || descr == ">u1") return DType::kUInt8;
  return std::nullopt;
}

// The header dictionary's values, parsed from the Python literal that numpy writes,
// e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (8192, 3), }
struct HeaderFields {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<std::int64_t>> shape;
};

class HeaderParser {
 public:
  HeaderParser(const std::filesystem::path& path, std::string_view text) : path_(path), text_(text) {}

  HeaderFields parse() {
    HeaderFields fields;
    expect('{');
    while (true) {
      skip_spaces();
      if (peek() == '}') break;

      const std::string key = parse_string();
      expect(':');
      if (key == "descr") {
        if (fields.descr) defect("key 'descr' appears twice");
        skip_spaces();
        if (peek() != '\'' && peek() != '"') {
          defect("'descr' is not a simple type string (structured dtypes are not supported)");
        }
        fields.descr = parse_string();
      } else if (key == "fortran_order") {
        if (fields.fortran_order) defect("key 'fortran_order' appears twice");
        fields.fortran_order = parse_bool();
      } else if (key == "shape") {
        if (fields.shape) defect("key 'shape' appears twice");
        fields.shape = parse_shape();
      } else {
        defect("unexpected key '" + key + "' (expected only 'descr', 'fortran_order' and 'shape')");
      }

      skip_spaces();
      if (peek() == ',') {
        ++position_;
        continue;
      }
      if (peek() != '}') defect("expected ',' or '}' after the value of '" + key + "'");
    }
    expect('}');

    skip_spaces();
    if (position_ != text_.size()) defect("unexpected text after the header dictionary");
    if (!fields.descr) defect("header has no 'descr' key");
    if (!fields.fortran_order) defect("header has no 'fortran_order' key");
    if (!fields.shape) defect("header has no 'shape' key");
    return fields;
  }

 private:
  [[noreturn]] void defect(const std::string& what) {
    fail(path_, "malformed header dictionary, " + what + " in \"" + std::string(text_) + "\"");
  }

  char peek() const { return position_ < text_.size() ? text_[position_] : '\0'; }

  void skip_spaces() {
    while (position_ < text_.size() && (text_[position_] == ' ' || text_[position_] == '\t' ||
                                        text_[position_] == '\n' || text_[position_] == '\r')) {
      ++position_;
    }
  }

  void expect(char c) {
    skip_spaces();
    if (peek() != c) defect(std::string("expected '") + c + "' at offset " + std::to_string(position_));
    ++position_;
  }

  std::string parse_string() {
    skip_spaces();
    const char quote = peek();
    if (quote != '\'' && quote != '"') defect("expected a quoted string at offset " + std::to_string(position_));
    ++position_;
    const std::size_t end = text_.find(quote, position_);
    if (end == std::string_view::npos) defect("unterminated string at offset " + std::to_string(position_));
    std::string value(text_.substr(position_, end - position_));
    position_ = end + 1;
    return value;
  }

  bool parse_bool() {
    skip_spaces();
    if (text_.substr(position_, 4) == "True") {
      position_ += 4;
      return true;
    }
    if (text_.substr(position_, 5) == "False") {
      position_ += 5;
      return false;
    }
    defect("'fortran_order' is neither True nor False");
  }

  std::int64_t parse_extent() {
    skip_spaces();
    const std::size_t start = position_;
    std::int64_t value = 0;
    while (position_ < text_.size() && text_[position_] >= '0' && text_[position_] <= '9') {
      const int digit = text_[position_] - '0';
      if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) defect("shape extent is too large");
      value = value * 10 + digit;
      ++position_;
    }
    // Files written by numpy under Python 2 can contain extents such as 3L (a Python 2 long).
    if (peek() == 'L') ++position_;
    if (position_ == start) defect("shape extent is not a non-negative integer at offset " + std::to_string(start));
    return value;
  }

  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    skip_spaces();
    if (peek() == ')') {
      ++position_;
      return shape;
    }
    while (true) {
      shape.push_back(parse_extent());
      skip_spaces();
      if (peek() == ')') {
        // "(5)" is the integer 5 in Python, not a tuple.
        if (shape.size() == 1) defect("a one-element shape needs a trailing comma, as in (5,)");
        ++position_;
        return shape;
      }
      if (peek() != ',') defect("expected ',' or ')' in 'shape'");
      ++position_;
      skip_spaces();
      if (peek() == ')') {
        ++position_;
        return shape;
      }
    }
  }

  const std::filesystem::path& path_;
  std::string_view text_;
  std::size_t position_ = 0;
};

std::uint32_t read_le(const unsigned char* bytes, std::size_t count) {
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < count; ++i) value |= static_cast<std::uint32_t>(bytes[i]) << (8 * i);
  return value;
}

// Reads exactly `size` bytes at `offset`. Returns false when the file ends first.
bool read_exact(int fd, const std::filesystem::path& path, void* buffer, std::size_t size, std::uint64_t offset) {
  auto* out = static_cast<char*>(buffer);
  std::size_t done = 0;
  while (done < size) {
    const ssize_t result = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (result < 0) {
      if (errno == EINTR) continue;
      throw IoError("read", path, errno);
    }
    if (result == 0) return false;
    done += static_cast<std::size_t>(result);
  }
  return true;
}

// Closes the descriptor on every path out of read_npy.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() { ::close(fd_); }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

const char* dtype_descr(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "<f4";
    case DType::kFloat64: return "<f8";
    case DType::kUInt16: return "<u2";
    case DType::kInt16: return "<i2";
    case DType::kInt64: return "<i8";
    case DType::kUInt8: return "|u1";
  }
  throw std::invalid_argument("dtype_descr: unknown DType value " + std::to_string(static_cast<int>(dtype)));
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kUInt16: return 2;
    case DType::kInt16: return 2;
    case DType::kInt64: return 8;
    case DType::kUInt8: return 1;
  }
  throw std::invalid_argument("dtype_size: unknown DType value " + std::to_string(static_cast<int>(dtype)));
}

std::int64_t NpyArray::element_count() const {
  std::int64_t count = 1;
  for (const std::int64_t extent : shape) count *= extent;
  return count;
}

namespace {

// Returns the version 1.0 header for the given dtype and shape, as numpy
// writes it: magic, version, little-endian u16 dictionary length, then the
// dictionary. Spaces and a closing '\n' pad it so that the data starts at a
// multiple of 64 bytes.
std::string encode_header(DType dtype, const std::vector<std::int64_t>& shape) {
  std::string dict = std::string("{'descr': '") + dtype_descr(dtype) + "', 'fortran_order': False, 'shape': " +
                     shape_string(shape) + ", }";
  const std::size_t prefix_size = kMagicSize + 2 + 2;
  const std::size_t unpadded = prefix_size + dict.size() + 1;
  const std::size_t padded = (unpadded + kHeaderAlignment - 1) / kHeaderAlignment * kHeaderAlignment;
  dict.append(padded - unpadded, ' ');
  dict.push_back('\n');
  if (dict.size() > std::numeric_limits<std::uint16_t>::max()) {
    throw std::invalid_argument("encode_npy: header for shape " + shape_string(shape) + " exceeds 65535 bytes");
  }

  std::string header(prefix_size, '\0');
  std::memcpy(header.data(), kMagic, kMagicSize);
  header[6] = 1;
  header[7] = 0;
  header[8] = static_cast<char>(dict.size() & 0xff);
  header[9] = static_cast<char>(dict.size() >> 8);
  return header + dict;
}

// Checks shape and data and returns the data's size in bytes.
std::uint64_t checked_data_bytes(DType dtype, const std::vector<std::int64_t>& shape, const void* data) {
  const std::optional<std::uint64_t> data_bytes = byte_count(shape, dtype_size(dtype));
  if (!data_bytes) throw std::invalid_argument("encode_npy: invalid shape " + shape_string(shape));
  if (*data_bytes > 0 && data == nullptr) {
    throw std::invalid_argument("encode_npy: data is null for shape " + shape_string(shape));
  }
  return *data_bytes;
}

struct FreeDeleter {
  void operator()(std::byte* bytes) const { std::free(bytes); }
};

}  // namespace

std::vector<std::byte> encode_npy(DType dtype, const std::vector<std::int64_t>& shape, const void* data) {
  const std::uint64_t data_bytes = checked_data_bytes(dtype, shape, data);
  const std::string header = encode_header(dtype, shape);
  std::vector<std::byte> image(header.size() + data_bytes);
  std::memcpy(image.data(), header.data(), header.size());
  if (data_bytes > 0) std::memcpy(image.data() + header.size(), data, data_bytes);
  return image;
}

void write_npy(const std::filesystem::path& path, DType dtype, const std::vector<std::int64_t>& shape,
               const void* data, const char* write_fault, Sync sync) {
  const std::uint64_t data_bytes = checked_data_bytes(dtype, shape, data);
  const std::string header = encode_header(dtype, shape);
  const std::size_t size = header.size() + data_bytes;

  // The file image in one buffer, aligned as Sync::kDirect needs it.
  const std::size_t capacity = (size + kDirectIoAlignment - 1) / kDirectIoAlignment * kDirectIoAlignment;
  std::unique_ptr<std::byte, FreeDeleter> image(
      static_cast<std::byte*>(std::aligned_alloc(kDirectIoAlignment, std::max(capacity, kDirectIoAlignment))));
  if (!image) throw std::bad_alloc();
  std::memcpy(image.get(), header.data(), header.size());
  if (data_bytes > 0) std::memcpy(image.get() + header.size(), data, data_bytes);

  const std::array<const char*, 2> faults = {"npy_write", write_fault};
  write_file_atomic(path, std::span<const std::byte>(image.get(), size),
                    std::span<const char* const>(faults.data(), write_fault != nullptr ? 2 : 1), sync);
}

namespace {

// Reads and checks the header of the open file `fd`; see read_npy_header.
NpyHeader read_header(int fd, const std::filesystem::path& path) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) throw IoError("fstat", path, errno);
  const auto file_size = static_cast<std::uint64_t>(info.st_size);

  // Magic and version come first. The dictionary length after them is 2 bytes in version 1.0, 4 in 2.0 and 3.0.
  std::array<unsigned char, 12> prefix{};
  if (!read_exact(fd, path, prefix.data(), 8, 0)) {
    fail(path, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte magic and version");
  }
  if (std::memcmp(prefix.data(), kMagic, kMagicSize) != 0) fail(path, "missing the \\x93NUMPY magic string");

  const int major = prefix[6];
  const int minor = prefix[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    fail(path, "unsupported format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " (expected 1.0, 2.0 or 3.0)");
  }
  const std::size_t length_size = major == 1 ? 2 : 4;
  if (!read_exact(fd, path, prefix.data() + 8, length_size, 8)) fail(path, "file ends inside the header length");
  const std::uint64_t dict_size = read_le(prefix.data() + 8, length_size);
  const std::uint64_t header_size = 8 + length_size + dict_size;
  if (header_size > file_size) {
    fail(path, "header claims " + std::to_string(header_size) + " bytes but the file has only " +
                   std::to_string(file_size));
  }

  std::string dict(dict_size, '\0');
  if (!read_exact(fd, path, dict.data(), dict_size, 8 + length_size)) fail(path, "file ends inside the header");
  const HeaderFields fields = HeaderParser(path, dict).parse();

  NpyHeader header;
  const std::optional<DType> dtype = dtype_from_descr(*fields.descr);
  if (!dtype) {
    std::string hint = "expected one of <f4 <f8 <u2 <i2 <i8 |u1";
    if (!fields.descr->empty() && fields.descr->front() == '>') hint = "big-endian data is not supported, " + hint;
    fail(path, "unsupported dtype descriptor '" + *fields.descr + "' (" + hint + ")");
  }
  header.dtype = *dtype;
  if (*fields.fortran_order) fail(path, "array is in Fortran order (fortran_order: True); only C order is supported");
  header.shape = *fields.shape;

  const std::optional<std::uint64_t> data_bytes = byte_count(header.shape, dtype_size(header.dtype));
  if (!data_bytes) fail(path, "shape " + shape_string(header.shape) + " is too large");
  const std::uint64_t expected_size = header_size + *data_bytes;
  if (file_size != expected_size) {
    const char* defect = file_size < expected_size ? "truncated" : "has trailing data";
    fail(path, std::string("file ") + defect + ": " + std::to_string(file_size) + " bytes, but header " +
                   std::to_string(header_size) + " + shape " + shape_string(header.shape) + " of " +
                   *fields.descr + " needs " + std::to_string(expected_size));
  }

  header.data_offset = header_size;
  return header;
}

void check_dtype_and_shape(const std::filesystem::path& path, const NpyHeader& header, DType dtype,
                           const std::vector<std::int64_t>& shape) {
  if (header.dtype != dtype) {
    fail(path, std::string("dtype is ") + dtype_descr(header.dtype) + ", expected " + dtype_descr(dtype));
  }
  bool shape_matches = header.shape.size() == shape.size();
  for (std::size_t i = 0; shape_matches && i < shape.size(); ++i) {
    if (shape[i] != -1 && shape[i] != header.shape[i]) shape_matches = false;
  }
  if (!shape_matches) {
    fail(path, "shape is " + shape_string(header.shape) + ", expected " + shape_string(shape));
  }
}

}  // namespace

NpyHeader read_npy_header(const std::filesystem::path& path) {
  const int raw_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw_fd < 0) throw IoError("open", path, errno);
  const FileDescriptor fd(raw_fd);
  return read_header(fd.get(), path);
}

NpyHeader read_npy_header_checked(const std::filesystem::path& path, DType dtype,
                                  const std::vector<std::int64_t>& shape) {
  NpyHeader header = read_npy_header(path);
  check_dtype_and_shape(path, header, dtype, shape);
  return header;
}

NpyArray read_npy(const std::filesystem::path& path) {
  const int raw_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw_fd < 0) throw IoError("open", path, errno);
  const FileDescriptor fd(raw_fd);
  const NpyHeader header = read_header(fd.get(), path);

  NpyArray array;
  array.dtype = header.dtype;
  array.shape = header.shape;
  array.data.resize(static_cast<std::size_t>(*byte_count(header.shape, dtype_size(header.dtype))));
  if (!read_exact(fd.get(), path, array.data.data(), array.data.size(), header.data_offset)) {
    fail(path, "file shrank while it was read");
  }
  return array;
}

NpyArray read_npy_checked(const std::filesystem::path& path, DType dtype, const std::vector<std::int64_t>& shape) {
  NpyArray array = read_npy(path);
  check_dtype_and_shape(path, NpyHeader{array.dtype, array.shape, 0}, dtype, shape);
  return array;
}

}  // namespace scaffold
