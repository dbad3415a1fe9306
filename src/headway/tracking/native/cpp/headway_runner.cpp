// headway-runner: paper A's Cases B and C outside the Python interpreter.
//
// Loads the stages exported by headway.tracking.native.stages (TorchScript, or AOTInductor
// packages: network.cpp), tracks one sequence frame by frame with the same crop, box-mapping
// and template-update rules as headway's Python tracker (headway/tracking/tracker.py and
// crop.py), and writes the same result files (files.cpp). In "heads" mode every encoder
// layer's attention heads run as jobs on a pool of std::threads, each thread owning one CUDA
// stream when the model is on a GPU (threads only on the CPU): no GIL anywhere.
//
// Bit-for-bit agreement with the Python tracker needs the crop to equal OpenCV's: the bilinear
// resize in images.cpp reproduces cv2.resize(INTER_LINEAR) on 8-bit images (11-bit fixed-point
// taps, the vectorised vertical pass's rounding) and the zero/non-zero pattern of the float
// mask resize; headway's tests compare both with cv2 on random crops.
//
// Usage:
//   headway-runner track JOB_FILE          (headway.tracking.native writes the job file)
//   headway-runner crop IMAGE X Y W H FACTOR SIZE OUT_PREFIX
//   headway-runner decode IMAGE OUT_FILE
//   headway-runner --version
// Exit status: 0 done, 2 bad input (unreadable frame, bad box, bad job), 1 anything else.

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "files.h"
#include "images.h"
#include "network.h"

namespace headway_runner {
namespace {

constexpr const char* kVersion = "headway-runner 1";

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
  const std::vector<double> init_box = parse_numbers("init_box", job.get("init_box"), 4);

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
}  // namespace headway_runner

int main(int argc, char** argv) {
  using namespace headway_runner;
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
