// Internal invariants. FATHOM_CHECK aborts with file:line and a message for broken invariants (bugs);
// user input never reaches it: that path returns absl::Status (see DESIGN.md, "Errors").
#ifndef FATHOM_FRAMEWORK_CHECK_H_
#define FATHOM_FRAMEWORK_CHECK_H_

#include <sstream>
#include <string>

namespace fathom {

[[noreturn]] void CheckFailed(const char* file, int line, const char* cond, const std::string& msg);

// Streams every argument, in order, into one string: StreamCat("rows ", 3, " vs ", 4).
template <class... Args>
std::string StreamCat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace fathom

// FATHOM_CHECK(cond, "[op] what was wrong ", value, ...): the message pieces are only built on failure.
#define FATHOM_CHECK(cond, ...)                                                           \
  do {                                                                                    \
    if (!(cond)) [[unlikely]] {                                                           \
      ::fathom::CheckFailed(__FILE__, __LINE__, #cond, ::fathom::StreamCat(__VA_ARGS__)); \
    }                                                                                     \
  } while (0)

#endif  // FATHOM_FRAMEWORK_CHECK_H_
