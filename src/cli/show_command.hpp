// `scaffold show`: writes the slice image of one dataset volume, with the
// prediction of a run's best checkpoint when a run directory is given.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace scaffold {

struct ShowOptions {
  std::string run_dir;                    // positional; empty with -c
  std::vector<std::string> config_files;  // -c; empty with a run directory
  int volume = -1;                        // --volume; -1 picks the first validation volume of a run
  std::string split;                      // --split: "", "training" or "validation"
  std::string output;                     // -o; empty writes <split>_<id>.png into the current directory
  std::string dataset_dir;                // --dataset-dir; empty keeps the config's dataset_dir
};

// Adds the `show` subcommand with its options bound to `options`.
CLI::App* add_show_command(CLI::App& app, ShowOptions& options);

// Runs `show`. Throws ConfigError for invalid options and std::runtime_error
// (with the ids that exist, or the missing file) when the volume, dataset or
// checkpoint cannot be found. Returns the exit code.
int run_show_command(const ShowOptions& options);

}  // namespace scaffold
