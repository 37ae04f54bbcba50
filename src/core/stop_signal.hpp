// Graceful stop on SIGINT and SIGTERM. The first signal only sets a flag that
// long loops poll, so the work in progress (a checkpoint write, a file) is
// finished. A second signal ends the process at once.
#pragma once

namespace scaffold {

// Installs the handlers for SIGINT and SIGTERM.
void install_stop_handlers();

// The signal number received, or 0 when none.
int stop_signal();

// Name for logs: "SIGINT", "SIGTERM" or "signal N".
const char* stop_signal_name(int signal_number);

// Thrown by loops that noticed a stop request after finishing their current step.
struct StopRequested {
  int signal_number;
};

}  // namespace scaffold
