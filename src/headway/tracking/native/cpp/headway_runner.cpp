// headway-runner: paper A's Cases B and C outside the Python interpreter.
//
// Loads the stages exported by headway.tracking.native.stages (TorchScript, or AOTInductor packages), tracks one sequence frame by
// frame with the same crop / box-mapping / template-update rules as headway's Python tracker
// (headway/tracking/tracker.py and crop.py), and writes the same result files. In "heads" mode
// every encoder layer's attention heads run as jobs on a pool of std::threads, each thread owning
// one CUDA stream when the model is on a GPU (threads only on the CPU): no GIL anywhere.
//
// Bit-for-bit agreement with the Python tracker needs the crop to equal OpenCV's: the bilinear
// resize below reproduces cv2.resize(INTER_LINEAR) on 8-bit images (11-bit fixed-point taps,
// the vectorised vertical pass's rounding) and the zero/non-zero pattern of the float mask
// resize; headway's tests compare both with cv2 on random crops.
//
// Usage:
//   headway-runner track JOB_FILE          (the job file format is written by headway.tracking.native)
//   headway-runner crop IMAGE X Y W H FACTOR SIZE OUT_PREFIX
//   headway-runner decode IMAGE OUT_FILE
//   headway-runner --version
// Exit status: 0 done, 2 bad input (unreadable frame, bad box, bad job), 1 anything else.

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#if __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#define HEADWAY_HAVE_AOTI 1
#endif
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef HEADWAY_HAVE_JPEG
#include <csetjmp>
#include <jpeglib.h>
#include <jerror.h>
#endif
#ifdef HEADWAY_HAVE_PNG
#include <png.h>
#endif

namespace {

constexpr const char* kVersion = "headway-runner 1";

// An error in what the user gave us (exit status 2), as opposed to a failure of the runner.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// Images: RGB uint8, row-major (H, W, 3)
// ---------------------------------------------------------------------------------------------

struct Image {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // height * width * 3
};

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

// Same limits as headway.tracking.crop.check_frame_size.
constexpr int kMinFrameSide = 16;

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

// ---------------------------------------------------------------------------------------------
// The tracker's crop (headway.tracking.crop.sample_target)
// ---------------------------------------------------------------------------------------------

struct Crop {
  std::vector<uint8_t> rgb;   // size * size * 3
  std::vector<uint8_t> mask;  // size * size, 1 = padding
  double resize_factor = 0;
};

// Python's slice bounds a[start:stop] on a length-n axis (negative indices count from the end).
std::pair<long, long> py_slice(long start, long stop, long n) {
  auto norm = [n](long i) { return i < 0 ? std::max(i + n, 0L) : std::min(i, n); };
  long a = norm(start), b = norm(stop);
  return {a, std::max(a, b)};
}

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

// ---------------------------------------------------------------------------------------------
// Job and model files (plain "key value" lines written by headway.tracking.native)
// ---------------------------------------------------------------------------------------------

struct Job {
  std::map<std::string, std::string> values;
  std::vector<std::string> frames;

  const std::string& get(const std::string& key) const {
    auto it = values.find(key);
    if (it == values.end()) throw InputError("job file has no '" + key + "' line");
    return it->second;
  }
  std::string get(const std::string& key, const std::string& fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
  double number(const std::string& key) const {
    try {
      return std::stod(get(key));
    } catch (const std::logic_error&) {
      throw InputError("job file: '" + key + "' is not a number: " + get(key));
    }
  }
};

Job read_key_values(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot be read");
  Job job;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.find(' ');
    const std::string key = line.substr(0, space);
    const std::string value = space == std::string::npos ? "" : line.substr(space + 1);
    if (key == "frame") job.frames.push_back(value);
    else job.values[key] = value;
  }
  return job;
}

// `count` numbers from one job line (`key` names it in the error).
std::vector<double> parse_numbers(const std::string& key, const std::string& text, size_t count) {
  std::istringstream in(text);
  std::vector<double> values(count);
  for (double& v : values)
    if (!(in >> v))
      throw InputError(key + " needs " + std::to_string(count) + " numbers, got '" + text + "'");
  return values;
}

std::vector<double> parse_box(const std::string& text) { return parse_numbers("init_box", text, 4); }

// ---------------------------------------------------------------------------------------------
// Head jobs on stream-owning threads (Case C)
// ---------------------------------------------------------------------------------------------

class HeadPool {
 public:
  // `worker_threads`: LibTorch intra-op threads of each worker (its own OpenMP team), so that
  // workers × teams do not oversubscribe the cores the caller's threads use.
  HeadPool(int workers, const c10::Device& device, int worker_threads)
      : device_(device), worker_threads_(worker_threads) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~HeadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // Runs every job (FIFO) and returns their outputs in order. On CUDA each worker runs its jobs
  // on its own stream, after the caller's stream has produced the inputs; the caller's stream
  // then waits for every head before it goes on.
  std::vector<at::Tensor> run_all(std::vector<std::function<at::Tensor()>> jobs) {
    std::vector<std::future<at::Tensor>> results;
    std::shared_ptr<c10::Event> inputs_ready;
    c10::optional<c10::Stream> caller;
    if (device_.is_cuda()) {
      c10::impl::VirtualGuardImpl guard(device_.type());
      caller = guard.getStream(device_);
      inputs_ready = std::make_shared<c10::Event>(device_.type());
      inputs_ready->record(*caller);
    }
    for (auto& job : jobs) {
      auto task = std::make_shared<std::packaged_task<at::Tensor(const c10::optional<c10::Stream>&)>>(
          [job, inputs_ready, caller](const c10::optional<c10::Stream>& own) {
            if (!own) return job();
            inputs_ready->block(*own);
            at::Tensor out = job();
            out.record_stream(*caller);  // the caller's stream will read it
            c10::Event done(own->device_type());
            done.record(*own);
            done.block(*caller);
            return out;
          });
      results.push_back(task->get_future());
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back([task](const c10::optional<c10::Stream>& own) { (*task)(own); });
      }
      ready_.notify_one();
    }
    std::vector<at::Tensor> outputs;
    for (auto& r : results) outputs.push_back(r.get());
    return outputs;
  }

 private:
  void work() {
    c10::InferenceMode inference;  // thread-local, like grad mode
    if (worker_threads_ > 0) {
      at::get_num_threads();  // this thread's lazy initialisation first, then its own count
      at::set_num_threads(worker_threads_);
    }
    c10::optional<c10::Stream> own;
    if (device_.is_cuda()) own = c10::impl::VirtualGuardImpl(device_.type()).getStreamFromGlobalPool(device_);
    c10::optional<c10::StreamGuard> on_stream;
    if (own) on_stream.emplace(*own);
    for (;;) {
      std::function<void(const c10::optional<c10::Stream>&)> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job(own);
    }
  }

  c10::Device device_;
  int worker_threads_ = 0;
  std::vector<std::thread> threads_;
  std::deque<std::function<void(const c10::optional<c10::Stream>&)>> queue_;
  std::mutex mutex_;
  std::condition_variable ready_;
  bool stopping_ = false;
};

// ---------------------------------------------------------------------------------------------
// The exported network
// ---------------------------------------------------------------------------------------------

struct Features {
  at::Tensor tokens, mask;
};

// One exported stage: a TorchScript module (NAME.pt) or an AOTInductor package (NAME.pt2),
// called with tensors, returning its outputs flattened (a tuple's elements in order).
class Stage {
 public:
  Stage() = default;
  Stage(const std::string& folder, const std::string& name, const c10::Device& device) {
    const std::string base = folder + "/" + name;
    if (std::ifstream(base + ".pt2")) {
#ifdef HEADWAY_HAVE_AOTI
      const c10::DeviceIndex index = device.has_index() ? device.index() : -1;
      package_ = std::make_shared<torch::inductor::AOTIModelPackageLoader>(base + ".pt2", "model", false, 1, index);
      return;
#else
      throw InputError(base + ".pt2 is an AOTInductor package, which this libtorch cannot load");
#endif
    }
    if (!std::ifstream(base + ".pt")) throw InputError(base + ".pt is missing (export the model again)");
    module_ = std::make_shared<torch::jit::Module>(torch::jit::load(base + ".pt", device));
    module_->eval();
  }

  std::vector<at::Tensor> operator()(const std::vector<at::Tensor>& inputs) const {
#ifdef HEADWAY_HAVE_AOTI
    if (package_) return package_->run(inputs);
#endif
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    c10::IValue out = module_->forward(args);
    if (!out.isTuple()) return {out.toTensor()};
    std::vector<at::Tensor> outputs;
    for (const auto& element : out.toTuple()->elements()) outputs.push_back(element.toTensor());
    return outputs;
  }

 private:
  std::shared_ptr<torch::jit::Module> module_;
#ifdef HEADWAY_HAVE_AOTI
  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> package_;
#endif
};

class Network {
 public:
  Network(const std::string& folder, const std::string& mode, int head_threads, int head_intra_op_threads)
      : folder_(folder) {
    Job manifest = read_key_values(folder + "/manifest.txt");
    if (manifest.get("format") != "1") throw InputError(folder + ": model format " + manifest.get("format") + " is not 1 (re-export it)");
    device_ = c10::Device(manifest.get("device"));
    if (device_.is_cuda() && !torch::cuda::is_available())
      throw InputError(folder + " was exported for " + manifest.get("device") + ", but this libtorch has no CUDA device");
    template_size = static_cast<int>(manifest.number("template_size"));
    search_size = static_cast<int>(manifest.number("search_size"));
    num_templates = static_cast<int>(manifest.number("num_templates"));
    const int layers = static_cast<int>(manifest.number("enc_layers"));
    const int heads = static_cast<int>(manifest.number("num_heads"));
    backbone_template_ = load("backbone_template");
    backbone_search_ = load("backbone_search");
    decoder_ = load("decoder");
    box_head_ = load("box_head");
    confidence_ = load("confidence");
    heads_mode_ = mode == "heads";
    if (mode != "heads" && mode != "stages") throw InputError("mode must be 'stages' or 'heads', got '" + mode + "'");
    if (heads_mode_) {
      for (int l = 0; l < layers; ++l) {
        project_.push_back(load("layer" + std::to_string(l) + "_project"));
        finish_.push_back(load("layer" + std::to_string(l) + "_finish"));
        std::vector<Stage> layer_heads;
        for (int h = 0; h < heads; ++h)
          layer_heads.push_back(load("layer" + std::to_string(l) + "_head" + std::to_string(h)));
        heads_.push_back(std::move(layer_heads));
      }
      const int workers = head_threads > 0 ? head_threads : heads;
      // default: as many as the caller, so every head's products are blocked as in the eager
      // network (bit-identical results); fewer trade that for less oversubscription
      const int per_worker = head_intra_op_threads > 0 ? head_intra_op_threads : at::get_num_threads();
      pool_ = std::make_unique<HeadPool>(workers, device_, per_worker);
    } else {
      encoder_ = load("encoder");
    }
    channels_last_ = manifest.get("channels_last", "0") == "1";
  }

  // The image normalisation (headway.tracking.settings, sent in the job file).
  void set_normalisation(const std::vector<double>& mean, const std::vector<double>& std) {
    mean_ = at::tensor(std::vector<float>(mean.begin(), mean.end()), at::kFloat).view({1, 3, 1, 1}).to(device_);
    std_ = at::tensor(std::vector<float>(std.begin(), std.end()), at::kFloat).view({1, 3, 1, 1}).to(device_);
  }

  const c10::Device& device() const { return device_; }

  // uint8 RGB crop + padding mask → normalised (1, 3, H, W) and (1, H, W) bool, as Preprocessor.
  std::pair<at::Tensor, at::Tensor> preprocess(const Crop& crop, int size) const {
    at::Tensor image = at::from_blob(const_cast<uint8_t*>(crop.rgb.data()), {size, size, 3}, at::kByte)
                           .to(device_)
                           .permute({2, 0, 1})
                           .unsqueeze(0)
                           .to(at::kFloat);
    image = (image / 255.0 - mean_) / std_;
    if (channels_last_) image = image.contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor mask = at::from_blob(const_cast<uint8_t*>(crop.mask.data()), {size, size}, at::kByte)
                          .to(at::kBool)
                          .to(device_)
                          .unsqueeze(0);
    return {image, mask};
  }

  Features backbone(bool search, const at::Tensor& image, const at::Tensor& mask) {
    auto out = (search ? backbone_search_ : backbone_template_)({image, mask});
    return {out[0], out[1]};
  }

  at::Tensor encoder(const at::Tensor& tokens, const at::Tensor& mask) {
    if (!heads_mode_) return encoder_({tokens, mask})[0];
    at::Tensor x = tokens;
    for (size_t l = 0; l < heads_.size(); ++l) {
      auto qkv = project_[l]({x});
      at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
      std::vector<std::function<at::Tensor()>> jobs;
      for (auto& head : heads_[l]) {
        const Stage* stage = &head;
        jobs.push_back([stage, q, k, v, mask] { return (*stage)({q, k, v, mask})[0]; });
      }
      at::Tensor attended = at::cat(pool_->run_all(std::move(jobs)), -1);
      x = finish_[l]({x, attended})[0];
    }
    return x;
  }

  at::Tensor decoder(const at::Tensor& memory, const at::Tensor& mask) {
    return decoder_({memory, mask})[0];
  }
  at::Tensor box_head(const at::Tensor& memory, const at::Tensor& decoded) {
    return box_head_({memory, decoded})[0].to(at::kFloat);
  }
  at::Tensor confidence(const at::Tensor& decoded) {
    return confidence_({decoded})[0].to(at::kFloat);
  }

  void synchronize() const {
    if (device_.is_cuda()) torch::cuda::synchronize(device_.index() < 0 ? -1 : device_.index());
  }

  int template_size = 0, search_size = 0, num_templates = 0;

 private:
  Stage load(const std::string& name) const { return Stage(folder_, name, device_); }

  std::string folder_;
  c10::Device device_ = c10::Device("cpu");
  bool heads_mode_ = false;
  bool channels_last_ = false;
  Stage backbone_template_, backbone_search_, encoder_, decoder_, box_head_, confidence_;
  std::vector<Stage> project_, finish_;
  std::vector<std::vector<Stage>> heads_;
  std::unique_ptr<HeadPool> pool_;
  at::Tensor mean_, std_;
};

// ---------------------------------------------------------------------------------------------
// The tracking loop (headway.tracking.tracker.CSWinTTTracker)
// ---------------------------------------------------------------------------------------------

const std::vector<std::string> kStages = {"load_preprocess", "backbone", "encoder", "decoder", "box_head",
                                          "template_update"};

struct Settings {
  double template_factor = 2.0, search_factor = 5.0, confidence_threshold = 0.5, box_margin = 10.0;
  long update_interval = 200;
};

class StageClock {
 public:
  explicit StageClock(const Network& network) : network_(network) {}
  template <typename F>
  auto time(const std::string& stage, F&& body) {
    network_.synchronize();
    auto began = std::chrono::steady_clock::now();
    auto out = body();
    network_.synchronize();
    frame_[stage] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began).count();
    return out;
  }
  std::map<std::string, double> finish_frame() {
    std::map<std::string, double> out;
    out.swap(frame_);
    return out;
  }

 private:
  const Network& network_;
  std::map<std::string, double> frame_;
};

std::vector<double> map_box_back(const std::vector<double>& box, const std::vector<double>& previous,
                                 double resize_factor, int search_size) {
  const double cx_prev = previous[0] + 0.5 * previous[2];
  const double cy_prev = previous[1] + 0.5 * previous[3];
  const double half_side = 0.5 * search_size / resize_factor;
  const double cx = box[0] + (cx_prev - half_side), cy = box[1] + (cy_prev - half_side);
  return {cx - 0.5 * box[2], cy - 0.5 * box[3], box[2], box[3]};
}

// Python's min/max keep the first argument when the comparison is false (NaN included).
double py_max(double a, double b) { return b > a ? b : a; }
double py_min(double a, double b) { return b < a ? b : a; }

std::vector<double> clip_box(const std::vector<double>& box, int height, int width, double margin) {
  double x1 = box[0], y1 = box[1];
  double x2 = x1 + box[2], y2 = y1 + box[3];
  x1 = py_min(py_max(0, x1), width - margin);
  x2 = py_min(py_max(margin, x2), width);
  y1 = py_min(py_max(0, y1), height - margin);
  y2 = py_min(py_max(margin, y2), height);
  return {x1, y1, py_max(margin, x2 - x1), py_max(margin, y2 - y1)};
}

void check_init_box(const std::vector<double>& box, const Image& image, const std::string& where) {
  for (double v : box)
    if (!std::isfinite(v)) throw InputError(where + ": initial box is not finite");
  if (box[2] <= 0 || box[3] <= 0) throw InputError(where + ": initial box has zero or negative size");
  if (box[2] > 4.0 * image.width || box[3] > 4.0 * image.height)
    throw InputError(where + ": initial box is more than 4x the image (wrong units or a swapped column?)");
  if (box[0] >= image.width || box[1] >= image.height || box[0] + box[2] <= 0 || box[1] + box[3] <= 0)
    throw InputError(where + ": initial box lies outside the image");
}

class Tracker {
 public:
  Tracker(Network& network, const Settings& settings) : net_(network), settings_(settings), clock_(network) {}

  void initialize(const Image& image, const std::vector<double>& box) {
    Features first = clock_.time("backbone", [&] { return template_features(image, box); });
    templates_.assign(net_.num_templates, first);
    state_ = box;
    frame_id_ = 0;
    updates_ = 0;
  }

  std::pair<std::vector<double>, double> track(const Image& image) {
    ++frame_id_;
    double resize_factor = 0;
    auto inputs = clock_.time("load_preprocess", [&] {
      Crop crop = sample_target(image, state_, settings_.search_factor, net_.search_size);
      resize_factor = crop.resize_factor;
      return net_.preprocess(crop, net_.search_size);
    });
    Features merged = clock_.time("backbone", [&] {
      Features search = net_.backbone(true, inputs.first, inputs.second);
      std::vector<at::Tensor> tokens, masks;
      for (const auto& t : templates_) tokens.push_back(t.tokens), masks.push_back(t.mask);
      tokens.push_back(search.tokens), masks.push_back(search.mask);
      return Features{at::cat(tokens, 0), at::cat(masks, 1)};
    });
    at::Tensor memory = clock_.time("encoder", [&] { return net_.encoder(merged.tokens, merged.mask); });
    at::Tensor decoded = clock_.time("decoder", [&] { return net_.decoder(memory, merged.mask); });
    double confidence = 0;
    std::vector<double> box = clock_.time("box_head", [&] {
      at::Tensor boxes = net_.box_head(memory, decoded);
      at::Tensor logit = net_.confidence(decoded);
      at::Tensor scaled = (boxes.view({-1, 4}).mean(0) * static_cast<int64_t>(net_.search_size) / resize_factor)
                              .to(at::kDouble)
                              .cpu()
                              .contiguous();
      confidence = at::sigmoid(logit).view({-1})[0].item<float>();
      return std::vector<double>(scaled.data_ptr<double>(), scaled.data_ptr<double>() + 4);
    });
    state_ = clip_box(map_box_back(box, state_, resize_factor, net_.search_size), image.height, image.width,
                      settings_.box_margin);
    if (frame_id_ % settings_.update_interval == 0 && confidence > settings_.confidence_threshold) {
      templates_.back() = clock_.time("template_update", [&] { return template_features(image, state_); });
      ++updates_;
    }
    return {state_, confidence};
  }

  StageClock& clock() { return clock_; }
  long updates() const { return updates_; }

 private:
  Features template_features(const Image& image, const std::vector<double>& box) {
    Crop crop = sample_target(image, box, settings_.template_factor, net_.template_size);
    auto inputs = net_.preprocess(crop, net_.template_size);
    return net_.backbone(false, inputs.first, inputs.second);
  }

  Network& net_;
  Settings settings_;
  StageClock clock_;
  std::vector<Features> templates_;
  std::vector<double> state_;
  long frame_id_ = 0, updates_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

std::string number(double v, const char* format = "%.17g") {
  if (!std::isfinite(v)) return "NaN";  // json.loads reads NaN
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, v);
  return buffer;
}

// Written to a temporary name and renamed, so a file that exists is complete.
void write_atomic(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp-runner";
  {
    std::ofstream out(temporary, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error(temporary + ": cannot be written");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot be written");
}

std::string json_list(const std::vector<double>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + number(values[i]);
  return out + "]";
}

std::string stage_json(const std::map<std::string, std::vector<double>>& stages) {
  std::string out = "{";
  bool first = true;
  for (const auto& name : kStages) {
    out += (first ? "\"" : ", \"") + name + "\": " + json_list(stages.at(name));
    first = false;
  }
  return out + "}";
}

// As headway.runtime.device.keep_freed_memory does for the Python tracker: glibc keeps freed
// memory for reuse instead of serving every tensor of a few MB from fresh, zeroed mmap pages.
void keep_freed_memory() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 * 1024 * 1024);
#endif
}

int command_track(const std::string& job_path) {
  keep_freed_memory();
  Job job = read_key_values(job_path);
  Settings settings;
  settings.template_factor = job.number("template_factor");
  settings.search_factor = job.number("search_factor");
  settings.update_interval = static_cast<long>(job.number("update_interval"));
  settings.confidence_threshold = job.number("confidence_threshold");
  settings.box_margin = job.number("box_margin");
  if (settings.update_interval < 1) throw InputError("update_interval must be >= 1");
  if (job.frames.empty()) throw InputError("job file lists no frames");
  const int threads = static_cast<int>(job.number("intra_op_threads"));
  if (threads > 0) at::set_num_threads(threads);
  c10::InferenceMode inference;
  at::get_num_threads();  // the caller's thread count is fixed before any worker starts
  Network network(job.get("model"), job.get("mode"), static_cast<int>(job.number("head_threads")),
                  static_cast<int>(std::stod(job.get("head_intra_op_threads", "0"))));
  network.set_normalisation(parse_numbers("mean", job.get("mean"), 3), parse_numbers("std", job.get("std"), 3));
  Tracker tracker(network, settings);
  const std::vector<double> init_box = parse_box(job.get("init_box"));

  std::vector<std::vector<double>> boxes;
  std::vector<double> confidences, frame_seconds, read_ms;
  std::map<std::string, std::vector<double>> stages;
  for (const auto& name : kStages) stages[name];
  const bool progress = job.get("progress", "0") == "1";
  Image first_frame;  // its size: every later frame must have it
  for (size_t index = 0; index < job.frames.size(); ++index) {
    const auto began = std::chrono::steady_clock::now();
    Image image = read_frame(job.frames[index]);
    check_frame_size(image, index == 0 ? nullptr : &first_frame, job.frames[index]);
    const double read = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began).count();
    if (index == 0) {
      first_frame.width = image.width;
      first_frame.height = image.height;
      check_init_box(init_box, image, job.get("name", "sequence") + " (" + job.frames[0] + ")");
      tracker.initialize(image, init_box);
      boxes.push_back(init_box);
      confidences.push_back(1.0);
    } else {
      auto [box, confidence] = tracker.track(image);
      boxes.push_back(box);
      confidences.push_back(confidence);
    }
    frame_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
    read_ms.push_back(read);
    auto measured = tracker.clock().finish_frame();
    measured["load_preprocess"] += read;  // as the Python tracker counts the frame read
    for (const auto& name : kStages) stages[name].push_back(measured.count(name) ? measured[name] : 0.0);
    if (progress) std::fprintf(stderr, "frame %zu\n", index + 1), std::fflush(stderr);
  }

  std::string out = "{\"runner\": \"" + std::string(kVersion) + "\", \"boxes\": [";
  for (size_t i = 0; i < boxes.size(); ++i) out += (i ? ", " : "") + json_list(boxes[i]);
  out += "], \"confidences\": " + json_list(confidences) + ", \"frame_seconds\": " + json_list(frame_seconds) +
         ", \"read_ms\": " + json_list(read_ms) + ", \"stage_ms\": " + stage_json(stages) +
         ", \"template_updates\": " + std::to_string(tracker.updates()) +
         ", \"intra_op_threads\": " + std::to_string(at::get_num_threads()) + "}\n";
  write_atomic(job.get("output"), out);

  // The same result files as the Python tracker (headway.tracking.results), when asked for.
  const std::string folder = job.get("results_dir", "");
  if (!folder.empty()) {
    const std::string name = job.get("name");
    const std::string delimiter = job.get("delimiter", "tab") == "comma" ? "," : "\t";
    std::string times, rows;
    for (double t : frame_seconds) times += number(t, "%.6f") + "\n";
    for (const auto& box : boxes) {
      for (size_t i = 0; i < 4; ++i) rows += (i ? delimiter : "") + number(box[i], "%.3f");
      rows += "\n";
    }
    write_atomic(folder + "/" + name + "_time.txt", times);
    write_atomic(folder + "/" + name + "_stages.json",
                 "{\"template_updates\": " + std::to_string(tracker.updates()) + ", \"stage_ms\": " + stage_json(stages) + "}");
    write_atomic(folder + "/" + name + ".txt", rows);  // last: its presence marks completion
  }
  return 0;
}

int command_crop(char** argv) {
  Image image = read_frame(argv[0]);
  std::vector<double> box = {std::stod(argv[1]), std::stod(argv[2]), std::stod(argv[3]), std::stod(argv[4])};
  const int size = std::stoi(argv[6]);
  Crop crop = sample_target(image, box, std::stod(argv[5]), size);
  const std::string prefix = argv[7];
  write_atomic(prefix + ".rgb", std::string(crop.rgb.begin(), crop.rgb.end()));
  write_atomic(prefix + ".mask", std::string(crop.mask.begin(), crop.mask.end()));
  std::printf("%s\n", number(crop.resize_factor).c_str());
  return 0;
}

int command_decode(char** argv) {
  Image image = read_frame(argv[0]);
  write_atomic(argv[1], std::string(image.pixels.begin(), image.pixels.end()));
  std::printf("%d %d\n", image.height, image.width);
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: headway-runner track JOB_FILE\n"
               "       headway-runner crop IMAGE X Y W H FACTOR SIZE OUT_PREFIX\n"
               "       headway-runner decode IMAGE OUT_FILE\n"
               "       headway-runner --version\n"
               "(headway writes job files: `headway track --executor cpp` runs this for you)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "--version") {
      std::printf("%s (libtorch %s, aoti %s, jpeg %s, png %s)\n", kVersion, TORCH_VERSION,
#ifdef HEADWAY_HAVE_AOTI
                  "yes",
#else
                  "no",
#endif
#ifdef HEADWAY_HAVE_JPEG
                  "yes",
#else
                  "no",
#endif
#ifdef HEADWAY_HAVE_PNG
                  "yes"
#else
                  "no"
#endif
      );
      return 0;
    }
    if (command == "track" && argc == 3) return command_track(argv[2]);
    if (command == "crop" && argc == 10) return command_crop(argv + 2);
    if (command == "decode" && argc == 4) return command_decode(argv + 2);
    return usage();
  } catch (const InputError& error) {
    std::fprintf(stderr, "headway-runner: %s\n", error.what());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "headway-runner: error: %s\n", error.what());
    return 1;
  }
}
