// deploycam C++ caller for AOTInductor packages: run an explanation compiled by export.to_aoti
// (deploycam export --format aoti) with libtorch's AOTIModelPackageLoader.
//
//   deploycam_aoti PACKAGE.pt2 INPUT.f32 N C H W OUT_PREFIX [TARGET]
//
// INPUT.f32 holds N*C*H*W little-endian float32 values (a preprocessed image batch, NCHW;
// examples/cpp/prepare_input.py writes one). Writes OUT_PREFIX.cam.f32 (N*H*W float32, the
// normalised maps in [0, 1]), OUT_PREFIX.logits.f32 (N*K float32) and OUT_PREFIX_<n>.pgm, and prints
// the package's deploycam metadata and "image <n>: class <k>" (the class each map explains: TARGET
// when given, else the image's top class).
//
// No grad mode is involved: the gradient was traced and compiled into the package, so it runs
// under c10::InferenceMode too (this caller does).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include "io.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

using deploycam_io::read_batch;
using deploycam_io::write_floats;
using deploycam_io::write_pgm;

int main(int argc, char** argv) {
  if (argc < 8) {
    std::cerr << "usage: " << argv[0] << " PACKAGE.pt2 INPUT.f32 N C H W OUT_PREFIX [TARGET]\n";
    return 2;
  }
  try {
    const std::string package = argv[1], input_path = argv[2], prefix = argv[7];
    const int64_t n = std::atoll(argv[3]), c = std::atoll(argv[4]), h = std::atoll(argv[5]), w = std::atoll(argv[6]);
    c10::InferenceMode inference;  // allowed: the package holds a forward-only graph
    torch::inductor::AOTIModelPackageLoader loader(package);
    auto metadata = loader.get_metadata();
    std::cout << "deploycam metadata: " << metadata["deploycam"] << "\n";

    auto input = read_batch(input_path, n, c, h, w);
    auto target = torch::full({n}, argc > 8 ? std::atoll(argv[8]) : -1, torch::kLong);  // -1: each image's top class

    std::vector<torch::Tensor> outputs;
    for (int run = 0; run < 3; ++run) outputs = loader.run({input, target});  // as a per-frame loop would
    auto logits = outputs.at(0), cam = outputs.at(1);
    write_floats(prefix + ".cam.f32", cam);
    write_floats(prefix + ".logits.f32", logits);
    auto classes = argc > 8 ? target : logits.argmax(1);
    for (int64_t i = 0; i < n; ++i) {
      write_pgm(prefix + "_" + std::to_string(i) + ".pgm", cam[i]);
      std::cout << "image " << i << ": class " << classes[i].item<int64_t>() << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
