// The command line, raw float32 files and PGM pictures of the deploycam C++ callers (main.cpp, aoti_main.cpp).
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace deploycam_io {

// What both callers take: GRAPH INPUT.f32 N C H W OUT_PREFIX [TARGET].
struct Invocation {
  std::string graph, input, prefix;
  int64_t n = 0, c = 0, h = 0, w = 0;
  bool has_target = false;
  int64_t target = -1;  // -1: each image's top class
};

// Reads argv into `out`; prints the usage line (naming `graph_kind`, e.g. "MODEL.pt") and returns false
// when arguments are missing.
inline bool parse_invocation(int argc, char** argv, const char* graph_kind, Invocation& out) {
  if (argc < 8) {
    std::cerr << "usage: " << argv[0] << " " << graph_kind << " INPUT.f32 N C H W OUT_PREFIX [TARGET]\n";
    return false;
  }
  out.graph = argv[1];
  out.input = argv[2];
  out.prefix = argv[7];
  out.n = std::atoll(argv[3]);
  out.c = std::atoll(argv[4]);
  out.h = std::atoll(argv[5]);
  out.w = std::atoll(argv[6]);
  out.has_target = argc > 8;
  if (out.has_target) out.target = std::atoll(argv[8]);
  return true;
}

inline std::vector<float> read_floats(const std::string& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<float> data(count);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(count * sizeof(float)))
    throw std::runtime_error(path + " holds fewer than N*C*H*W float32 values");
  return data;
}

// The (N, C, H, W) float32 batch stored in a raw file.
inline torch::Tensor read_batch(const std::string& path, int64_t n, int64_t c, int64_t h, int64_t w) {
  auto data = read_floats(path, static_cast<std::size_t>(n * c * h * w));
  return torch::from_blob(data.data(), {n, c, h, w}, torch::kFloat32).clone();
}

inline void write_floats(const std::string& path, const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kFloat32).cpu();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<std::streamsize>(c.numel() * sizeof(float)));
}

inline void write_pgm(const std::string& path, const torch::Tensor& map) {  // map: (H, W) in [0, 1]
  auto bytes = (map.clamp(0, 1) * 255.0 + 0.5).to(torch::kUInt8).contiguous().cpu();
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << map.size(1) << " " << map.size(0) << "\n255\n";
  out.write(reinterpret_cast<const char*>(bytes.data_ptr<std::uint8_t>()), bytes.numel());
}

// PREFIX.cam.f32, PREFIX.logits.f32 and PREFIX_<n>.pgm, and "image <n>: class <k>" on stdout: the class
// each map explains (the target when one was given, else the image's top class).
inline void write_results(const Invocation& run, const torch::Tensor& logits, const torch::Tensor& cam) {
  write_floats(run.prefix + ".cam.f32", cam);
  write_floats(run.prefix + ".logits.f32", logits);
  auto classes = run.has_target ? torch::full({run.n}, run.target, torch::kLong) : logits.argmax(1);
  for (int64_t i = 0; i < run.n; ++i) {
    write_pgm(run.prefix + "_" + std::to_string(i) + ".pgm", cam[i]);
    std::cout << "image " << i << ": class " << classes[i].item<int64_t>() << "\n";
  }
}

}  // namespace deploycam_io
