// headway-runner's images: frames read as RGB bytes (JPEG, PNG, PPM, uncompressed BMP) and
// refused as the Python tracker refuses them (headway/tracking/crop.py), and the tracker's crop
// with the OpenCV-equal bilinear resize. No LibTorch here.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace headway_runner {

// An error in what the user gave us (exit status 2), as opposed to a failure of the runner.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// RGB uint8, row-major (H, W, 3)
struct Image {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // height * width * 3
};

// Same limits as headway.tracking.crop.check_frame_size.
constexpr int kMinFrameSide = 16;

// The frame at `path`, decoded; InputError when it is missing, truncated, damaged or of a
// format the runner does not read.
Image read_frame(const std::string& path);

// InputError when `image` is under kMinFrameSide a side or (given `first`) of another size.
void check_frame_size(const Image& image, const Image* first, const std::string& path);

// The tracker's crop (headway.tracking.crop.sample_target)
struct Crop {
  std::vector<uint8_t> rgb;   // size * size * 3
  std::vector<uint8_t> mask;  // size * size, 1 = padding
  double resize_factor = 0;
};

Crop sample_target(const Image& image, const std::vector<double>& box, double factor, int size);

}  // namespace headway_runner
