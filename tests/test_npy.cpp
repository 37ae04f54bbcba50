// Tests for .npy reading and writing: exact header bytes, round trips of every
// dtype, rejection of malformed files, and exchange with NumPy itself.
#include "core/npy.hpp"

#include "core/atomic_file.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace scaffold {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPython = "/usr/bin/python3";

const std::vector<DType> kAllDTypes = {DType::kFloat32, DType::kFloat64, DType::kUInt16,
                                       DType::kInt16,   DType::kInt64,   DType::kUInt8};

std::string as_string(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Element i of the test arrays, the same formula as in the Python scripts below,
// chosen so that every dtype's range and sign are exercised.
template <typename T>
T test_value(std::int64_t i);
template <>
float test_value<float>(std::int64_t i) { return static_cast<float>(i) * 0.25f - 3.0f; }
template <>
double test_value<double>(std::int64_t i) { return static_cast<double>(i) / 3.0 - 1e10; }
template <>
std::uint16_t test_value<std::uint16_t>(std::int64_t i) { return static_cast<std::uint16_t>((i * 1009) % 65536); }
template <>
std::int16_t test_value<std::int16_t>(std::int64_t i) { return static_cast<std::int16_t>(i * 37 - 500); }
template <>
std::int64_t test_value<std::int64_t>(std::int64_t i) { return i * 1000000000000LL - 7; }
template <>
std::uint8_t test_value<std::uint8_t>(std::int64_t i) { return static_cast<std::uint8_t>((i * 13) % 256); }

template <typename T>
std::vector<std::byte> fill_bytes(std::int64_t count) {
  std::vector<std::byte> bytes(static_cast<std::size_t>(count) * sizeof(T));
  for (std::int64_t i = 0; i < count; ++i) {
    const T value = test_value<T>(i);
    std::memcpy(bytes.data() + i * sizeof(T), &value, sizeof(T));
  }
  return bytes;
}

std::vector<std::byte> test_bytes(DType dtype, std::int64_t count) {
  switch (dtype) {
    case DType::kFloat32: return fill_bytes<float>(count);
    case DType::kFloat64: return fill_bytes<double>(count);
    case DType::kUInt16: return fill_bytes<std::uint16_t>(count);
    case DType::kInt16: return fill_bytes<std::int16_t>(count);
    case DType::kInt64: return fill_bytes<std::int64_t>(count);
    case DType::kUInt8: return fill_bytes<std::uint8_t>(count);
  }
  return {};
}

std::int64_t product(const std::vector<std::int64_t>& shape) {
  std::int64_t count = 1;
  for (const std::int64_t extent : shape) count *= extent;
  return count;
}

bool python_has_numpy() { return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0; }

class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "scaffold-npy-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp failed for " << pattern;
    directory_ = pattern;
  }

  void TearDown() override {
    std::error_code error;
    fs::remove_all(directory_, error);
  }

  // Writes a file with the given version and header dictionary, padded as
  // numpy pads it, followed by `data_bytes` zero bytes.
  fs::path write_crafted(const std::string& name, const std::string& dict, std::size_t data_bytes, int major = 1) {
    const std::size_t length_size = major == 1 ? 2 : 4;
    std::string padded = dict;
    while ((8 + length_size + padded.size() + 1) % 64 != 0) padded += ' ';
    padded += '\n';

    std::string image = "\x93NUMPY";
    image += static_cast<char>(major);
    image += '\0';
    for (std::size_t i = 0; i < length_size; ++i) image += static_cast<char>((padded.size() >> (8 * i)) & 0xff);
    image += padded;
    image.append(data_bytes, '\0');

    const fs::path path = directory_ / name;
    write_file_atomic(path, image);
    return path;
  }

  // Expects read_npy to throw NpyError naming the path, the defect and the remedy.
  void expect_rejected(const fs::path& path, const std::string& defect) {
    try {
      read_npy(path);
      ADD_FAILURE() << "expected NpyError for " << path;
    } catch (const NpyError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      EXPECT_NE(message.find(defect), std::string::npos) << "expected \"" << defect << "\" in: " << message;
      EXPECT_NE(message.find("regenerate the file or remove it"), std::string::npos) << message;
    }
  }

  // Runs a Python script with the temporary directory as its argument; returns its exit code.
  int run_python(const std::string& script) {
    const fs::path script_path = directory_ / "check.py";
    write_file_atomic(script_path, script);
    const std::string command = std::string(kPython) + " " + script_path.string() + " " + directory_.string();
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  fs::path directory_;
};

TEST(NpyDType, DescriptorsAndSizes) {
  EXPECT_STREQ(dtype_descr(DType::kFloat32), "<f4");
  EXPECT_STREQ(dtype_descr(DType::kFloat64), "<f8");
  EXPECT_STREQ(dtype_descr(DType::kUInt16), "<u2");
  EXPECT_STREQ(dtype_descr(DType::kInt16), "<i2");
  EXPECT_STREQ(dtype_descr(DType::kInt64), "<i8");
  EXPECT_STREQ(dtype_descr(DType::kUInt8), "|u1");
  EXPECT_EQ(dtype_size(DType::kFloat32), 4u);
  EXPECT_EQ(dtype_size(DType::kFloat64), 8u);
  EXPECT_EQ(dtype_size(DType::kUInt16), 2u);
  EXPECT_EQ(dtype_size(DType::kInt16), 2u);
  EXPECT_EQ(dtype_size(DType::kInt64), 8u);
  EXPECT_EQ(dtype_size(DType::kUInt8), 1u);
}

TEST(NpyEncode, HandWorkedHeaderBytes) {
  // The dictionary text is 59 characters. With the 10-byte prefix and the
  // closing newline that is 70, so 58 spaces pad the header to 128 bytes and
  // the length field contains 128 - 10 = 118 = 0x76.
  const float values[6] = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f, 0.0f};
  const std::vector<std::byte> image = encode_npy(DType::kFloat32, {2, 3}, values);

  const std::string expected_header = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                                      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" +
                                      std::string(58, ' ') + "\n";
  ASSERT_EQ(expected_header.size(), 128u);
  ASSERT_EQ(image.size(), 128u + sizeof(values));
  EXPECT_EQ(as_string(image).substr(0, 128), expected_header);
  EXPECT_EQ(std::memcmp(image.data() + 128, values, sizeof(values)), 0);
}

TEST(NpyEncode, ShapeTextForZeroAndOneDimension) {
  const double scalar = 2.5;
  const std::string zero_d = as_string(encode_npy(DType::kFloat64, {}, &scalar));
  EXPECT_NE(zero_d.find("'shape': (), }"), std::string::npos) << zero_d;
  // Even the shortest dictionary needs more than 64 bytes, so the header is 128.
  EXPECT_EQ(zero_d.size(), 128u + 8u);

  const std::vector<std::int16_t> line(5, 0);
  const std::string one_d = as_string(encode_npy(DType::kInt16, {5}, line.data()));
  EXPECT_NE(one_d.find("'shape': (5,), }"), std::string::npos) << one_d;
}

TEST(NpyEncode, HeaderAlignedFor64Bytes) {
  const std::vector<std::vector<std::int64_t>> shapes = {
      {}, {0}, {1}, {8192, 3}, {1, 1, 1, 1, 1, 1, 1}, {123456789012, 0, 987654321098, 5, 0, 77777777777, 0}};
  for (const auto& shape : shapes) {
    const std::vector<std::byte> data(static_cast<std::size_t>(product(shape)));
    const std::vector<std::byte> image = encode_npy(DType::kUInt8, shape, data.data());
    const std::size_t dict_size = std::to_integer<std::size_t>(image[8]) | std::to_integer<std::size_t>(image[9]) << 8;
    const std::size_t header_size = 10 + dict_size;
    EXPECT_EQ(header_size % 64, 0u) << "header size " << header_size;
    EXPECT_EQ(image.size(), header_size + data.size());
    EXPECT_EQ(static_cast<char>(image[header_size - 1]), '\n');
  }
}

TEST(NpyEncode, NullDataWithElementsThrows) {
  EXPECT_THROW(encode_npy(DType::kFloat32, {2}, nullptr), std::invalid_argument);
}

TEST(NpyEncode, NegativeExtentThrows) {
  const float value = 0;
  EXPECT_THROW(encode_npy(DType::kFloat32, {-1, 3}, &value), std::invalid_argument);
}

TEST_F(NpyTest, RoundTripEveryDType) {
  const std::vector<std::vector<std::int64_t>> shapes = {{}, {7}, {2, 3, 4}, {0}, {0, 3}, {4, 0, 2}};
  for (const DType dtype : kAllDTypes) {
    for (const auto& shape : shapes) {
      const std::vector<std::byte> bytes = test_bytes(dtype, product(shape));
      const fs::path path = directory_ / (std::string("round_trip_") + std::to_string(static_cast<int>(dtype)) +
                                          "_" + std::to_string(shape.size()) + ".npy");
      write_npy(path, dtype, shape, bytes.data());

      const NpyArray array = read_npy(path);
      EXPECT_EQ(array.dtype, dtype) << path;
      EXPECT_EQ(array.shape, shape) << path;
      EXPECT_EQ(array.element_count(), product(shape)) << path;
      EXPECT_EQ(array.data, bytes) << path;
    }
  }
}

TEST_F(NpyTest, TypedAccessToValues) {
  const std::vector<std::byte> bytes = test_bytes(DType::kInt64, 6);
  const fs::path path = directory_ / "typed.npy";
  write_npy(path, DType::kInt64, {3, 2}, bytes.data());

  const NpyArray array = read_npy(path);
  for (std::int64_t i = 0; i < 6; ++i) EXPECT_EQ(array.as<std::int64_t>()[i], i * 1000000000000LL - 7);
}

TEST_F(NpyTest, AcceptsVersion2And3Headers) {
  for (const int major : {2, 3}) {
    const fs::path path = write_crafted("v" + std::to_string(major) + ".npy",
                                        "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }", 6, major);
    const NpyArray array = read_npy(path);
    EXPECT_EQ(array.dtype, DType::kUInt16);
    EXPECT_EQ(array.shape, std::vector<std::int64_t>{3});
  }
}

TEST_F(NpyTest, AcceptsReorderedKeysAndDoubleQuotes) {
  const fs::path path =
      write_crafted("reordered.npy", "{\"shape\": (2, 2), \"fortran_order\": False, \"descr\": \"<i2\"}", 8);
  const NpyArray array = read_npy(path);
  EXPECT_EQ(array.dtype, DType::kInt16);
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 2}));
}

TEST_F(NpyTest, RejectsBadMagic) {
  const fs::path path = directory_ / "magic.npy";
  std::string image(128, ' ');
  image.replace(0, 6, "\x93NUMPZ");
  write_file_atomic(path, image);
  expect_rejected(path, "missing the \\x93NUMPY magic string");
}

TEST_F(NpyTest, RejectsShortFile) {
  const fs::path path = directory_ / "short.npy";
  write_file_atomic(path, std::string("\x93NUM", 4));
  expect_rejected(path, "shorter than the 8-byte magic and version");
}

TEST_F(NpyTest, RejectsUnknownVersion) {
  const fs::path path = write_crafted("v4.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 4, 4);
  expect_rejected(path, "unsupported format version 4.0");
}

TEST_F(NpyTest, RejectsBigEndian) {
  const fs::path path = write_crafted("big.npy", "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8);
  expect_rejected(path, "unsupported dtype descriptor '>f4' (big-endian data is not supported");
}

TEST_F(NpyTest, RejectsUnknownDType) {
  const fs::path path = write_crafted("complex.npy", "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16);
  expect_rejected(path, "unsupported dtype descriptor '<c8'");
}

TEST_F(NpyTest, RejectsStructuredDType) {
  const fs::path path =
      write_crafted("structured.npy", "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8);
  expect_rejected(path, "structured dtypes are not supported");
}

TEST_F(NpyTest, RejectsFortranOrder) {
  const fs::path path = write_crafted("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24);
  expect_rejected(path, "Fortran order");
}

TEST_F(NpyTest, RejectsMalformedShapes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"(2, x)", "shape extent is not a non-negative integer"},
      {"(-1, 3)", "shape extent is not a non-negative integer"},
      {"(5)", "a one-element shape needs a trailing comma"},
      {"[2, 3]", "expected '('"},
      {"(2 3)", "expected ',' or ')' in 'shape'"},
      {"(99999999999999999999,)", "shape extent is too large"},
      {"(4294967296, 4294967296, 4294967296)", "is too large"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& [shape_text, defect] = cases[i];
    const fs::path path = write_crafted("shape" + std::to_string(i) + ".npy",
                                        "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text + ", }", 24);
    SCOPED_TRACE(shape_text);
    expect_rejected(path, defect);
  }
}

TEST_F(NpyTest, RejectsMissingAndExtraKeys) {
  expect_rejected(write_crafted("no_descr.npy", "{'fortran_order': False, 'shape': (1,), }", 4),
                  "header has no 'descr' key");
  expect_rejected(write_crafted("no_order.npy", "{'descr': '<f4', 'shape': (1,), }", 4),
                  "header has no 'fortran_order' key");
  expect_rejected(write_crafted("no_shape.npy", "{'descr': '<f4', 'fortran_order': False, }", 4),
                  "header has no 'shape' key");
  expect_rejected(
      write_crafted("extra.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'units': 'm', }", 4),
      "unexpected key 'units'");
  expect_rejected(write_crafted("twice.npy", "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, }", 4),
                  "key 'descr' appears twice");
}

TEST_F(NpyTest, RejectsMalformedDictionary) {
  expect_rejected(write_crafted("no_brace.npy", "'descr': '<f4'", 4), "expected '{'");
  expect_rejected(write_crafted("unterminated.npy", "{'descr: '<f4', }", 4), "malformed header dictionary");
  expect_rejected(write_crafted("bad_bool.npy", "{'descr': '<f4', 'fortran_order': false, 'shape': (1,), }", 4),
                  "'fortran_order' is neither True nor False");
  expect_rejected(write_crafted("trailing_text.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", 4),
                  "unexpected text after the header dictionary");
}

TEST_F(NpyTest, RejectsTruncatedData) {
  const std::vector<std::byte> bytes = test_bytes(DType::kFloat32, 6);
  const fs::path path = directory_ / "truncated.npy";
  write_npy(path, DType::kFloat32, {2, 3}, bytes.data());
  fs::resize_file(path, fs::file_size(path) - 1);
  expect_rejected(path, "file truncated: 151 bytes, but header 128 + shape (2, 3) of <f4 needs 152");
}

TEST_F(NpyTest, RejectsTrailingData) {
  const std::vector<std::byte> bytes = test_bytes(DType::kUInt8, 4);
  const fs::path path = directory_ / "trailing.npy";
  write_npy(path, DType::kUInt8, {4}, bytes.data());
  fs::resize_file(path, fs::file_size(path) + 3);
  expect_rejected(path, "file has trailing data: 135 bytes, but header 128 + shape (4,) of |u1 needs 132");
}

TEST_F(NpyTest, RejectsHeaderLongerThanFile) {
  const fs::path path = directory_ / "cut_header.npy";
  const std::vector<std::byte> image = encode_npy(DType::kFloat32, {0}, nullptr);
  write_file_atomic(path, std::span<const std::byte>(image.data(), 40));
  expect_rejected(path, "header claims 128 bytes but the file has only 40");
}

TEST_F(NpyTest, MissingFileThrowsIoError) {
  const fs::path path = directory_ / "absent.npy";
  try {
    read_npy(path);
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_NE(std::string(error.what()).find("open failed for " + path.string()), std::string::npos);
  }
}

TEST_F(NpyTest, CheckedReadMatchesWildcards) {
  const std::vector<std::byte> bytes = test_bytes(DType::kFloat32, 8192 * 3);
  const fs::path path = directory_ / "points.npy";
  write_npy(path, DType::kFloat32, {8192, 3}, bytes.data());

  EXPECT_EQ(read_npy_checked(path, DType::kFloat32, {8192, 3}).shape, (std::vector<std::int64_t>{8192, 3}));
  EXPECT_EQ(read_npy_checked(path, DType::kFloat32, {-1, 3}).shape, (std::vector<std::int64_t>{8192, 3}));
  EXPECT_EQ(read_npy_checked(path, DType::kFloat32, {-1, -1}).data, bytes);
}

TEST_F(NpyTest, CheckedReadRejectsMismatch) {
  const std::vector<std::byte> bytes = test_bytes(DType::kFloat32, 6);
  const fs::path path = directory_ / "points.npy";
  write_npy(path, DType::kFloat32, {2, 3}, bytes.data());

  try {
    read_npy_checked(path, DType::kFloat64, {2, 3});
    ADD_FAILURE() << "expected NpyError for the dtype";
  } catch (const NpyError& error) {
    EXPECT_NE(std::string(error.what()).find("dtype is <f4, expected <f8"), std::string::npos) << error.what();
  }
  try {
    read_npy_checked(path, DType::kFloat32, {-1, 4});
    ADD_FAILURE() << "expected NpyError for the extent";
  } catch (const NpyError& error) {
    EXPECT_NE(std::string(error.what()).find("shape is (2, 3), expected (any, 4)"), std::string::npos)
        << error.what();
  }
  EXPECT_THROW(read_npy_checked(path, DType::kFloat32, {6}), NpyError);
}

// The Python side of the exchange tests: the same value formulas as test_value.
constexpr const char* kPythonValues = R"(
import sys, os, numpy
directory = sys.argv[1]
def values(dtype, shape):
    i = numpy.arange(int(numpy.prod(shape, dtype=numpy.int64)), dtype=numpy.int64)
    if dtype == '<f4': v = i.astype(numpy.float32) * numpy.float32(0.25) - numpy.float32(3)
    elif dtype == '<f8': v = i.astype(numpy.float64) / 3.0 - 1e10
    elif dtype == '<u2': v = (i * 1009) % 65536
    elif dtype == '<i2': v = i * 37 - 500
    elif dtype == '<i8': v = i * 1000000000000 - 7
    elif dtype == '|u1': v = (i * 13) % 256
    return v.astype(dtype).reshape(shape)
cases = [(d, s) for d in ['<f4', '<f8', '<u2', '<i2', '<i8', '|u1'] for s in [(), (7,), (2, 3, 4), (0, 3)]]
def name(d, s):
    return 'x_%s_%s.npy' % ('f4 f8 u2 i2 i8 u1'.split()[['<f4', '<f8', '<u2', '<i2', '<i8', '|u1'].index(d)],
                            '_'.join(map(str, s)) or 'scalar')
)";

TEST_F(NpyTest, NumpyLoadsOurFiles) {
  if (!python_has_numpy()) GTEST_SKIP() << kPython << " cannot import numpy; install python3-numpy to run this test";

  const std::vector<std::pair<DType, const char*>> tags = {{DType::kFloat32, "f4"}, {DType::kFloat64, "f8"},
                                                           {DType::kUInt16, "u2"},  {DType::kInt16, "i2"},
                                                           {DType::kInt64, "i8"},   {DType::kUInt8, "u1"}};
  const std::vector<std::pair<std::vector<std::int64_t>, std::string>> shapes = {
      {{}, "scalar"}, {{7}, "7"}, {{2, 3, 4}, "2_3_4"}, {{0, 3}, "0_3"}};
  for (const auto& [dtype, tag] : tags) {
    for (const auto& [shape, shape_tag] : shapes) {
      const std::vector<std::byte> bytes = test_bytes(dtype, product(shape));
      write_npy(directory_ / ("x_" + std::string(tag) + "_" + shape_tag + ".npy"), dtype, shape, bytes.data());
    }
  }

  const std::string script = std::string(kPythonValues) + R"(
failures = 0
for d, s in cases:
    a = numpy.load(os.path.join(directory, name(d, s)))
    expected = values(d, s)
    if a.dtype != numpy.dtype(d) or a.shape != s or not a.flags['C_CONTIGUOUS'] or not numpy.array_equal(a, expected):
        print('mismatch in', name(d, s), a.dtype, a.shape, file=sys.stderr)
        failures += 1
sys.exit(1 if failures else 0)
)";
  EXPECT_EQ(run_python(script), 0) << "numpy.load disagreed with a file written by write_npy (details on stderr)";
}

TEST_F(NpyTest, ReadsFilesSavedByNumpy) {
  if (!python_has_numpy()) GTEST_SKIP() << kPython << " cannot import numpy; install python3-numpy to run this test";

  const std::string script = std::string(kPythonValues) + R"(
for d, s in cases:
    numpy.save(os.path.join(directory, name(d, s)), values(d, s))
numpy.save(os.path.join(directory, 'fortran.npy'), numpy.asfortranarray(numpy.ones((2, 3), dtype='<f4')))
numpy.save(os.path.join(directory, 'big_endian.npy'), numpy.arange(3, dtype='>f4'))
)";
  ASSERT_EQ(run_python(script), 0) << "the Python script that calls numpy.save failed (details on stderr)";

  const std::vector<std::pair<DType, const char*>> tags = {{DType::kFloat32, "f4"}, {DType::kFloat64, "f8"},
                                                           {DType::kUInt16, "u2"},  {DType::kInt16, "i2"},
                                                           {DType::kInt64, "i8"},   {DType::kUInt8, "u1"}};
  const std::vector<std::pair<std::vector<std::int64_t>, std::string>> shapes = {
      {{}, "scalar"}, {{7}, "7"}, {{2, 3, 4}, "2_3_4"}, {{0, 3}, "0_3"}};
  for (const auto& [dtype, tag] : tags) {
    for (const auto& [shape, shape_tag] : shapes) {
      const fs::path path = directory_ / ("x_" + std::string(tag) + "_" + shape_tag + ".npy");
      const NpyArray array = read_npy(path);
      EXPECT_EQ(array.dtype, dtype) << path;
      EXPECT_EQ(array.shape, shape) << path;
      EXPECT_EQ(array.data, test_bytes(dtype, product(shape))) << path;
    }
  }

  expect_rejected(directory_ / "fortran.npy", "Fortran order");
  expect_rejected(directory_ / "big_endian.npy", "big-endian");
}

}  // namespace
}  // namespace scaffold
