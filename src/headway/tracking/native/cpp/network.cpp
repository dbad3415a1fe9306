// headway-runner's network (network.h).
#include "network.h"

#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include <ATen/Parallel.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/cuda.h>

#include "files.h"

namespace headway_runner {

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

Stage::Stage(const std::string& folder, const std::string& name, const c10::Device& device) {
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

std::vector<at::Tensor> Stage::operator()(const std::vector<at::Tensor>& inputs) const {
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

Network::Network(const std::string& folder, const std::string& mode, int head_threads, int head_intra_op_threads)
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

Network::~Network() = default;

void Network::set_normalisation(const std::vector<double>& mean, const std::vector<double>& std) {
  mean_ = at::tensor(std::vector<float>(mean.begin(), mean.end()), at::kFloat).view({1, 3, 1, 1}).to(device_);
  std_ = at::tensor(std::vector<float>(std.begin(), std.end()), at::kFloat).view({1, 3, 1, 1}).to(device_);
}

std::pair<at::Tensor, at::Tensor> Network::preprocess(const Crop& crop, int size) const {
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

Features Network::backbone(bool search, const at::Tensor& image, const at::Tensor& mask) {
  auto out = (search ? backbone_search_ : backbone_template_)({image, mask});
  return {out[0], out[1]};
}

at::Tensor Network::encoder(const at::Tensor& tokens, const at::Tensor& mask) {
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

at::Tensor Network::decoder(const at::Tensor& memory, const at::Tensor& mask) {
  return decoder_({memory, mask})[0];
}

at::Tensor Network::box_head(const at::Tensor& memory, const at::Tensor& decoded) {
  return box_head_({memory, decoded})[0].to(at::kFloat);
}

at::Tensor Network::confidence(const at::Tensor& decoded) {
  return confidence_({decoded})[0].to(at::kFloat);
}

void Network::synchronize() const {
  if (device_.is_cuda()) torch::cuda::synchronize(device_.index() < 0 ? -1 : device_.index());
}

}  // namespace headway_runner
