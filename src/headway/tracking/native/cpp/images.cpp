// headway-runner's images (images.h): decoders, checks, and the crop whose resize reproduces
// cv2.resize(INTER_LINEAR) on 8-bit images bit for bit.
#include "images.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#ifdef HEADWAY_HAVE_JPEG
#include <csetjmp>
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>
#endif
#ifdef HEADWAY_HAVE_PNG
#include <png.h>
#endif

namespace headway_runner {
namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": frame is missing");
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Last position of a two-byte marker, or -1.
long rfind_marker(const std::vector<uint8_t>& data, uint8_t a, uint8_t b) {
  for (long i = static_cast<long>(data.size()) - 2; i >= 0; --i)
    if (data[i] == a && data[i + 1] == b) return i;
  return -1;
}

bool starts_with(const std::vector<uint8_t>& data, const char* prefix, size_t n) {
  return data.size() >= n && std::memcmp(data.data(), prefix, n) == 0;
}

// Same rule as headway.tracking.crop._truncated: decoders fill a missing tail with grey.
bool truncated(const std::vector<uint8_t>& data) {
  if (starts_with(data, "\xff\xd8", 2)) return rfind_marker(data, 0xff, 0xd9) < rfind_marker(data, 0xff, 0xda);
  if (starts_with(data, "\x89PNG\r\n\x1a\n", 8)) {
    size_t from = data.size() > 64 ? data.size() - 64 : 0;
    for (size_t i = from; i + 4 <= data.size(); ++i)
      if (std::memcmp(data.data() + i, "IEND", 4) == 0) return false;
    return true;
  }
  return false;
}

#ifdef HEADWAY_HAVE_JPEG
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  char warning[JMSG_LENGTH_MAX] = {0};
};

void jpeg_quiet(j_common_ptr) {}  // nothing is printed: warnings are kept, then refused

// A warning that the data is damaged ("Corrupt JPEG data: premature end of data segment", a
// bad Huffman code, "Premature end of JPEG file") means libjpeg filled part of the frame with
// grey: the frame is refused, as in the Python tracker. Extraneous bytes before a marker leave
// the image whole and are let through (cameras write them).
void jpeg_warn(j_common_ptr info, int level) {
  if (level >= 0) return;  // trace messages, not warnings
  auto* error = reinterpret_cast<JpegError*>(info->err);
  info->err->num_warnings++;
  if (info->err->msg_code == JWRN_EXTRANEOUS_DATA || error->warning[0] != 0) return;
  (*info->err->format_message)(info, error->warning);
}

void jpeg_fail(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  std::longjmp(error->jump, 1);
}

Image decode_jpeg(const std::vector<uint8_t>& data, const std::string& path) {
  jpeg_decompress_struct info;
  JpegError error;
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = jpeg_fail;
  error.manager.output_message = jpeg_quiet;
  error.manager.emit_message = jpeg_warn;
  Image image;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&info);
    throw InputError(path + ": frame cannot be decoded as an image (" + error.message + ")");
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data.data(), data.size());
  jpeg_read_header(&info, TRUE);
  info.out_color_space = JCS_RGB;  // libjpeg's defaults otherwise: islow IDCT, fancy upsampling
  jpeg_start_decompress(&info);
  image.height = static_cast<int>(info.output_height);
  image.width = static_cast<int>(info.output_width);
  image.pixels.resize(static_cast<size_t>(image.height) * image.width * 3);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = image.pixels.data() + static_cast<size_t>(info.output_scanline) * image.width * 3;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  if (error.warning[0] != 0)
    throw InputError(path + ": frame is damaged (libjpeg: " + error.warning + ")");
  return image;
}
#endif

#ifdef HEADWAY_HAVE_PNG
Image decode_png(const std::vector<uint8_t>& data, const std::string& path) {
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, data.data(), data.size()))
    throw InputError(path + ": frame cannot be decoded as an image (" + png.message + ")");
  if (png.format & (PNG_FORMAT_FLAG_LINEAR | PNG_FORMAT_FLAG_ALPHA | PNG_FORMAT_FLAG_COLORMAP)) {
    png_image_free(&png);
    throw InputError(path + ": only 8-bit RGB or grey PNG frames are read by the runner");
  }
  png.format = PNG_FORMAT_RGB;
  Image image;
  image.height = static_cast<int>(png.height);
  image.width = static_cast<int>(png.width);
  image.pixels.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, image.pixels.data(), 0, nullptr))
    throw InputError(path + ": frame cannot be decoded as an image (" + png.message + ")");
  return image;
}
#endif

// Binary PPM (P6, 8-bit): no library needed, so headway's benchmarks write their frames so.
Image decode_ppm(const std::vector<uint8_t>& data, const std::string& path) {
  size_t at = 2;
  auto field = [&]() -> long {
    for (;;) {
      while (at < data.size() && std::isspace(data[at])) ++at;
      if (at < data.size() && data[at] == '#') {
        while (at < data.size() && data[at] != '\n') ++at;
        continue;
      }
      break;
    }
    long value = 0;
    size_t digits = 0;
    for (; at < data.size() && std::isdigit(data[at]); ++at, ++digits) value = value * 10 + (data[at] - '0');
    if (digits == 0 || value > 1000000) throw InputError(path + ": frame cannot be decoded as an image (bad PPM header)");
    return value;
  };
  Image image;
  image.width = static_cast<int>(field());
  image.height = static_cast<int>(field());
  if (field() != 255) throw InputError(path + ": only 8-bit PPM frames are read by the runner");
  ++at;  // the single whitespace before the pixels
  const size_t bytes = static_cast<size_t>(image.width) * image.height * 3;
  if (image.width < 1 || image.height < 1 || data.size() < at + bytes)
    throw InputError(path + ": frame is truncated (the image file ends before its data)");
  image.pixels.assign(data.begin() + at, data.begin() + at + bytes);
  return image;
}

// Uncompressed BMP (BI_RGB, 24 or 32 bits per pixel, either row order), as OpenCV writes it.
Image decode_bmp(const std::vector<uint8_t>& data, const std::string& path) {
  auto u16 = [&](size_t at) { return static_cast<uint32_t>(data[at] | (data[at + 1] << 8)); };
  auto u32 = [&](size_t at) { return u16(at) | (u16(at + 2) << 16); };
  if (data.size() < 54) throw InputError(path + ": frame is truncated (the image file ends before its data)");
  const uint32_t offset = u32(10), bits = u16(28), compression = u32(30);
  const int32_t width = static_cast<int32_t>(u32(18)), signed_height = static_cast<int32_t>(u32(22));
  if (compression != 0 || (bits != 24 && bits != 32))
    throw InputError(path + ": the runner reads uncompressed 24- or 32-bit BMP frames only (this one has " +
                     std::to_string(bits) + " bits, compression " + std::to_string(compression) + ")");
  const bool bottom_up = signed_height > 0;
  const int64_t height = bottom_up ? signed_height : -static_cast<int64_t>(signed_height);
  if (width < 1 || height < 1 || width > 1000000 || height > 1000000)
    throw InputError(path + ": frame cannot be decoded as an image (bad BMP size)");
  const size_t step = bits / 8, row_bytes = (static_cast<size_t>(width) * step + 3) & ~static_cast<size_t>(3);
  if (offset + row_bytes * static_cast<size_t>(height) > data.size())
    throw InputError(path + ": frame is truncated (the image file ends before its data)");
  Image image;
  image.width = width;
  image.height = static_cast<int>(height);
  image.pixels.resize(static_cast<size_t>(width) * image.height * 3);
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* row = data.data() + offset + row_bytes * static_cast<size_t>(bottom_up ? image.height - 1 - y : y);
    uint8_t* out = image.pixels.data() + static_cast<size_t>(y) * width * 3;
    for (int x = 0; x < width; ++x) {
      out[3 * x] = row[step * x + 2];  // stored B, G, R
      out[3 * x + 1] = row[step * x + 1];
      out[3 * x + 2] = row[step * x];
    }
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// OpenCV-equal bilinear resize
// ---------------------------------------------------------------------------------------------

struct Taps {
  std::vector<int> low, high;  // source indices, clipped to the image
  std::vector<float> frac;     // weight of `high` (float, as OpenCV computes it)
};

// OpenCV's source coordinate of destination pixel d: (d + 0.5)·scale − 0.5 in float. Columns
// left of the first / right of the last source pixel take that pixel alone (clamp_edges);
// rows keep their fractional weight and read clipped rows.
Taps make_taps(int source, int dest, bool clamp_edges) {
  Taps taps;
  const double scale = 1.0 / (static_cast<double>(dest) / source);
  for (int d = 0; d < dest; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= static_cast<float>(s);
    if (clamp_edges) {
      if (s < 0) f = 0.f, s = 0;
      if (s >= source - 1) f = 0.f, s = source - 1;
    }
    taps.low.push_back(std::min(std::max(s, 0), source - 1));
    taps.high.push_back(std::min(std::max(s + 1, 0), source - 1));
    taps.frac.push_back(f);
  }
  return taps;
}

int fixed_weight(float w) { return static_cast<int>(std::nearbyint(w * 2048.0f)); }

// cv2.resize(src, (size, size)) for 8-bit 3-channel images (INTER_LINEAR).
std::vector<uint8_t> resize_rgb(const std::vector<uint8_t>& src, int height, int width, int size) {
  const Taps xs = make_taps(width, size, true), ys = make_taps(height, size, false);
  std::vector<int> ax0(size), ax1(size);
  for (int x = 0; x < size; ++x) ax0[x] = fixed_weight(1.f - xs.frac[x]), ax1[x] = fixed_weight(xs.frac[x]);
  // Horizontal pass for every source row (kept simple: crops are small).
  std::vector<int> rows(static_cast<size_t>(height) * size * 3);
  for (int y = 0; y < height; ++y) {
    const uint8_t* in = src.data() + static_cast<size_t>(y) * width * 3;
    int* out = rows.data() + static_cast<size_t>(y) * size * 3;
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c)
        out[x * 3 + c] = in[xs.low[x] * 3 + c] * ax0[x] + in[xs.high[x] * 3 + c] * ax1[x];
  }
  std::vector<uint8_t> dst(static_cast<size_t>(size) * size * 3);
  for (int y = 0; y < size; ++y) {
    const int b0 = fixed_weight(1.f - ys.frac[y]), b1 = fixed_weight(ys.frac[y]);
    const int* r0 = rows.data() + static_cast<size_t>(ys.low[y]) * size * 3;
    const int* r1 = rows.data() + static_cast<size_t>(ys.high[y]) * size * 3;
    uint8_t* out = dst.data() + static_cast<size_t>(y) * size * 3;
    for (int i = 0; i < size * 3; ++i) {
      // the vectorised pass: 16-bit high products of (row >> 4) and the weight, then round
      int v = (((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2) >> 2;
      out[i] = static_cast<uint8_t>(std::min(std::max(v, 0), 255));
    }
  }
  return dst;
}

// cv2.resize(mask.astype(float32), (size, size)) != 0 for a 0/1 mask: a destination pixel is
// non-zero when a source pixel with a non-zero weight is (weights are never negative).
std::vector<uint8_t> resize_mask(const std::vector<uint8_t>& src, int height, int width, int size) {
  const Taps xs = make_taps(width, size, true), ys = make_taps(height, size, false);
  std::vector<uint8_t> cols(static_cast<size_t>(height) * size);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < size; ++x) {
      const uint8_t* in = src.data() + static_cast<size_t>(y) * width;
      cols[static_cast<size_t>(y) * size + x] = in[xs.low[x]] || (xs.frac[x] != 0.f && in[xs.high[x]]);
    }
  std::vector<uint8_t> dst(static_cast<size_t>(size) * size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      dst[static_cast<size_t>(y) * size + x] =
          cols[static_cast<size_t>(ys.low[y]) * size + x] ||
          (ys.frac[y] != 0.f && cols[static_cast<size_t>(ys.high[y]) * size + x]);
  return dst;
}

// Python's slice bounds a[start:stop] on a length-n axis (negative indices count from the end).
std::pair<long, long> py_slice(long start, long stop, long n) {
  auto norm = [n](long i) { return i < 0 ? std::max(i + n, 0L) : std::min(i, n); };
  long a = norm(start), b = norm(stop);
  return {a, std::max(a, b)};
}

}  // namespace

void check_frame_size(const Image& image, const Image* first, const std::string& path) {
  const std::string size = std::to_string(image.width) + "x" + std::to_string(image.height);
  if (image.width < kMinFrameSide || image.height < kMinFrameSide)
    throw InputError(path + ": frame is " + size + "; the tracker needs at least " +
                     std::to_string(kMinFrameSide) + " pixels per side");
  if (first != nullptr && (image.width != first->width || image.height != first->height))
    throw InputError(path + ": frame is " + size + " but the sequence's first frame is " +
                     std::to_string(first->width) + "x" + std::to_string(first->height));
}

Image read_frame(const std::string& path) {
  std::vector<uint8_t> data = read_bytes(path);
  if (truncated(data)) throw InputError(path + ": frame is truncated (the image file ends before its data)");
  if (starts_with(data, "\xff\xd8", 2)) {
#ifdef HEADWAY_HAVE_JPEG
    return decode_jpeg(data, path);
#else
    throw InputError(path + ": this headway-runner was built without libjpeg (install libjpeg-dev, rebuild)");
#endif
  }
  if (starts_with(data, "\x89PNG\r\n\x1a\n", 8)) {
#ifdef HEADWAY_HAVE_PNG
    return decode_png(data, path);
#else
    throw InputError(path + ": this headway-runner was built without libpng (install libpng-dev, rebuild)");
#endif
  }
  if (starts_with(data, "P6", 2)) return decode_ppm(data, path);
  if (starts_with(data, "BM", 2)) return decode_bmp(data, path);
  throw InputError(path + ": frame cannot be decoded as an image (the runner reads JPEG, PNG, PPM and BMP)");
}

// ---------------------------------------------------------------------------------------------
// The tracker's crop (headway.tracking.crop.sample_target)
// ---------------------------------------------------------------------------------------------

Crop sample_target(const Image& image, const std::vector<double>& box, double factor, int size) {
  const double x = box[0], y = box[1], w = box[2], h = box[3];
  const double side = std::ceil(std::sqrt(w * h) * factor);
  if (!(side >= 1)) throw InputError("box is too small to crop");
  const long crop = static_cast<long>(side);
  const long x1 = static_cast<long>(std::nearbyint(x + 0.5 * w - crop * 0.5));  // round half even
  const long y1 = static_cast<long>(std::nearbyint(y + 0.5 * h - crop * 0.5));
  const long x2 = x1 + crop, y2 = y1 + crop;
  const long x1_pad = std::max(0L, -x1), y1_pad = std::max(0L, -y1);
  const long x2_pad = std::max(x2 - image.width + 1, 0L), y2_pad = std::max(y2 - image.height + 1, 0L);
  auto [r0, r1] = py_slice(y1 + y1_pad, y2 - y2_pad, image.height);
  auto [c0, c1] = py_slice(x1 + x1_pad, x2 - x2_pad, image.width);
  long ph, pw;
  std::vector<uint8_t> padded, mask;
  if (r1 == r0 || c1 == c0) {
    ph = pw = crop;
    padded.assign(static_cast<size_t>(ph * pw * 3), 0);
    mask.assign(static_cast<size_t>(ph * pw), 1);
  } else {
    ph = (r1 - r0) + y1_pad + y2_pad;
    pw = (c1 - c0) + x1_pad + x2_pad;
    padded.assign(static_cast<size_t>(ph * pw * 3), 0);
    for (long r = r0; r < r1; ++r)
      std::memcpy(padded.data() + ((r - r0 + y1_pad) * pw + x1_pad) * 3,
                  image.pixels.data() + (r * image.width + c0) * 3, static_cast<size_t>((c1 - c0) * 3));
    mask.assign(static_cast<size_t>(ph * pw), 1);
    auto [m0, m1] = py_slice(y1_pad, ph - y2_pad, ph);
    auto [n0, n1] = py_slice(x1_pad, pw - x2_pad, pw);
    for (long r = m0; r < m1; ++r) std::fill(mask.begin() + r * pw + n0, mask.begin() + r * pw + n1, 0);
  }
  Crop out;
  out.rgb = resize_rgb(padded, static_cast<int>(ph), static_cast<int>(pw), size);
  out.mask = resize_mask(mask, static_cast<int>(ph), static_cast<int>(pw), size);
  out.resize_factor = static_cast<double>(size) / static_cast<double>(crop);
  return out;
}

}  // namespace headway_runner
