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
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  deploycam_io::Invocation run;
  if (!deploycam_io::parse_invocation(argc, argv, "PACKAGE.pt2", run)) return 2;
  try {
    c10::InferenceMode inference;  // allowed: the package holds a forward-only graph
    torch::inductor::AOTIModelPackageLoader loader(run.graph);
    auto metadata = loader.get_metadata();
    std::cout << "deploycam metadata: " << metadata["deploycam"] << "\n";

    auto input = deploycam_io::read_batch(run.input, run.n, run.c, run.h, run.w);
    auto target = torch::full({run.n}, run.target, torch::kLong);  // -1: each image's top class

    std::vector<torch::Tensor> outputs;
    for (int i = 0; i < 3; ++i) outputs = loader.run({input, target});  // as a per-frame loop would
    deploycam_io::write_results(run, outputs.at(0), outputs.at(1));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
