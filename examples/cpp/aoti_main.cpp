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

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

std::vector<float> read_floats(const std::string& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<float> data(count);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(count * sizeof(float)))
    throw std::runtime_error(path + " holds fewer than N*C*H*W float32 values");
  return data;
}

void write_floats(const std::string& path, const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kFloat32).cpu();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<std::streamsize>(c.numel() * sizeof(float)));
}

void write_pgm(const std::string& path, const torch::Tensor& map) {  // map: (H, W) in [0, 1]
  auto bytes = (map.clamp(0, 1) * 255.0 + 0.5).to(torch::kUInt8).contiguous().cpu();
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << map.size(1) << " " << map.size(0) << "\n255\n";
  out.write(reinterpret_cast<const char*>(bytes.data_ptr<std::uint8_t>()), bytes.numel());
}

}  // namespace

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

    auto data = read_floats(input_path, static_cast<std::size_t>(n * c * h * w));
    auto input = torch::from_blob(data.data(), {n, c, h, w}, torch::kFloat32).clone();
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
