// deploycam C++ caller: load an exported TorchScript explanation and run it with libtorch.
//
//   deploycam_cam MODEL.pt INPUT.f32 N C H W OUT_PREFIX [TARGET]
//
// INPUT.f32 holds N*C*H*W little-endian float32 values (a preprocessed image batch, NCHW;
// examples/cpp/prepare_input.py writes one). Writes OUT_PREFIX.cam.f32 (N*H*W float32, the
// normalised maps in [0, 1]), OUT_PREFIX.logits.f32 (N*K float32), OUT_PREFIX_<n>.pgm (each map
// as an 8-bit grey picture), and prints "image <n>: class <k>" for each image: the class the map
// explains (TARGET when given, else the image's top class). It also checks that a call that fails
// inside the graph (an input with the wrong channel count) leaves grad mode as it was.
//
// The graph calls torch.autograd.grad: leave grad mode on (the default). Do NOT run it under
// c10::InferenceMode or torch::NoGradGuard; it refuses such calls (TorchScript's executor would
// strip autograd from its optimised plan). The backbone still runs without grad inside the graph.
#include <torch/script.h>

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
    std::cerr << "usage: " << argv[0] << " MODEL.pt INPUT.f32 N C H W OUT_PREFIX [TARGET]\n";
    return 2;
  }
  try {
    const std::string model_path = argv[1], input_path = argv[2], prefix = argv[7];
    const int64_t n = std::atoll(argv[3]), c = std::atoll(argv[4]), h = std::atoll(argv[5]), w = std::atoll(argv[6]);
    torch::jit::script::Module module = torch::jit::load(model_path);

    auto input = read_batch(input_path, n, c, h, w);
    std::vector<torch::jit::IValue> args{input};
    if (argc > 8) args.emplace_back(torch::full({n}, std::atoll(argv[8]), torch::kLong));

    // Run it three times, as a per-frame loop would: TorchScript optimises the graph after the
    // first runs, and the optimised plan must give the same explanation.
    c10::intrusive_ptr<c10::ivalue::Tuple> outputs;
    for (int run = 0; run < 3; ++run) outputs = module.forward(args).toTuple();
    auto logits = outputs->elements()[0].toTensor();
    auto cam = outputs->elements()[1].toTensor();

    write_floats(prefix + ".cam.f32", cam);
    write_floats(prefix + ".logits.f32", logits);
    auto classes = argc > 8 ? torch::full({n}, std::atoll(argv[8]), torch::kLong) : logits.argmax(1);

    // A failing call must not leave grad mode off in this thread (the graph restores it on errors).
    try {
      module.forward({torch::zeros({1, c + 1, h, w})});
    } catch (const std::exception&) {
    }
    std::cout << "grad mode after a failed call: " << (torch::GradMode::is_enabled() ? "on" : "off") << "\n";
    module.forward(args);  // and the next valid call still runs
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
