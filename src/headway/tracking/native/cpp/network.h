// headway-runner's network: the stages headway.tracking.native.stages exported (TorchScript
// modules or AOTInductor packages) loaded into LibTorch, and in "heads" mode every encoder
// layer's heads run as jobs on a pool of threads, each owning a CUDA stream on a GPU (Case C).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>
#if __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#define HEADWAY_HAVE_AOTI 1
#endif

#include "images.h"

namespace headway_runner {

struct Features {
  at::Tensor tokens, mask;
};

// One exported stage: a TorchScript module (NAME.pt) or an AOTInductor package (NAME.pt2),
// called with tensors, returning its outputs flattened (a tuple's elements in order).
class Stage {
 public:
  Stage() = default;
  Stage(const std::string& folder, const std::string& name, const c10::Device& device);
  std::vector<at::Tensor> operator()(const std::vector<at::Tensor>& inputs) const;

 private:
  std::shared_ptr<torch::jit::Module> module_;
#ifdef HEADWAY_HAVE_AOTI
  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> package_;
#endif
};

class HeadPool;  // network.cpp: head jobs on stream-owning threads

// The exported network of a model folder (its manifest.txt says the device, sizes and layout).
class Network {
 public:
  Network(const std::string& folder, const std::string& mode, int head_threads, int head_intra_op_threads);
  ~Network();

  // The image normalisation (headway.tracking.settings, sent in the job file).
  void set_normalisation(const std::vector<double>& mean, const std::vector<double>& std);
  const c10::Device& device() const { return device_; }
  // uint8 RGB crop + padding mask → normalised (1, 3, H, W) and (1, H, W) bool, as Preprocessor.
  std::pair<at::Tensor, at::Tensor> preprocess(const Crop& crop, int size) const;
  Features backbone(bool search, const at::Tensor& image, const at::Tensor& mask);
  at::Tensor encoder(const at::Tensor& tokens, const at::Tensor& mask);
  at::Tensor decoder(const at::Tensor& memory, const at::Tensor& mask);
  at::Tensor box_head(const at::Tensor& memory, const at::Tensor& decoded);
  at::Tensor confidence(const at::Tensor& decoded);
  void synchronize() const;

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

}  // namespace headway_runner
