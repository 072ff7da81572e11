#include <cstdio>
#include <string>
#include <vector>

#include "launch/commands.h"

namespace {

void Usage(FILE* out = stderr) {
  std::fprintf(
      out,
      "usage: fathom <command> [args]\n"
      "  train RECIPE.yaml [--set key=value ...]   train a model from a recipe\n"
      "  plan RECIPE.yaml --cluster CLUSTER.yaml   choose pp/ep/dp, schedule and micro-batching\n"
      "  simulate RECIPE.yaml --cluster CLUSTER.yaml [--trace out.json]\n"
      "                                            simulate one step of a parallel plan\n"
      "  bench RECIPE.yaml [--set key=value ...] [--warmup N] [--steps N]\n"
      "                                            time GPU training steps: tokens/s, MFU, memory,\n"
      "                                            time per phase (train.device cuda)\n"
      "  preprocess (--input FILE.jsonl | --demo-corpus) --output-prefix PREFIX\n"
      "                                            tokenize documents into a Megatron .bin/.idx\n"
      "                                            (or HDF5) dataset for data.source megatron\n"
      "  diagnose [--device auto|cpu|cuda]          check every rank's device: GEMM, attention and\n"
      "                                            all-reduce results compared bitwise, times vs median\n"
      "  export CHECKPOINT --out HF_DIR [--dtype bf16|fp8|f32] [--shard-size 5GB]\n"
      "                                            write a checkpoint as a DeepSeek-V3 HF directory\n"
      "  import HF_DIR --out CHECKPOINT_DIR [--recipe RECIPE.yaml]\n"
      "                                            read an HF directory into a weights-only checkpoint\n"
      "  logits SOURCE --tokens T.safetensors --out L.safetensors\n"
      "                                            fathom's CPU forward over a checkpoint or HF directory\n"
      "  COMMAND --help                            the command's usage\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage();
    return 2;
  }
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "train") return fathom::RunTrain(args);
  if (cmd == "plan") return fathom::RunPlan(args);
  if (cmd == "simulate") return fathom::RunSimulate(args);
  if (cmd == "bench") return fathom::RunBench(args);
  if (cmd == "preprocess") return fathom::RunPreprocess(args);
  if (cmd == "diagnose") return fathom::RunDiagnose(args);
  if (cmd == "export") return fathom::RunExport(args);
  if (cmd == "import") return fathom::RunImport(args);
  if (cmd == "logits") return fathom::RunLogits(args);
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  std::fprintf(stderr,
               "fathom: unknown command '%s'; expected train, plan, simulate, bench, preprocess, diagnose, "
               "export, import or logits\n",
               cmd.c_str());
  Usage();
  return 2;
}
