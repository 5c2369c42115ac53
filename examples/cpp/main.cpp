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
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  deploycam_io::Invocation run;
  if (!deploycam_io::parse_invocation(argc, argv, "MODEL.pt", run)) return 2;
  try {
    torch::jit::script::Module module = torch::jit::load(run.graph);

    auto input = deploycam_io::read_batch(run.input, run.n, run.c, run.h, run.w);
    std::vector<torch::jit::IValue> args{input};
    if (run.has_target) args.emplace_back(torch::full({run.n}, run.target, torch::kLong));

    // Run it three times, as a per-frame loop would: TorchScript optimises the graph after the
    // first runs, and the optimised plan must give the same explanation.
    c10::intrusive_ptr<c10::ivalue::Tuple> outputs;
    for (int i = 0; i < 3; ++i) outputs = module.forward(args).toTuple();
    auto logits = outputs->elements()[0].toTensor();
    auto cam = outputs->elements()[1].toTensor();

    // A failing call must not leave grad mode off in this thread (the graph restores it on errors).
    try {
      module.forward({torch::zeros({1, run.c + 1, run.h, run.w})});
    } catch (const std::exception&) {
    }
    std::cout << "grad mode after a failed call: " << (torch::GradMode::is_enabled() ? "on" : "off") << "\n";
    module.forward(args);  // and the next valid call still runs
    deploycam_io::write_results(run, logits, cam);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
