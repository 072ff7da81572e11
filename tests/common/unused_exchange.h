// An ExpertExchange for tests that build model slices holding some of the experts but never run them
// forward (parameter tables, checkpoints, memory counts): every call is a bug.
#ifndef FATHOM_TESTS_COMMON_UNUSED_EXCHANGE_H_
#define FATHOM_TESTS_COMMON_UNUSED_EXCHANGE_H_

#include <cstdlib>

#include "framework/check.h"
#include "layers/expert_exchange.h"

namespace fathom::testing {

class UnusedExpertExchange final : public ExpertExchange {
 public:
  RowsInFlight StartDispatch(const Tensor&, const Tensor&, DispatchHandle*) override { Fail(); }
  RowsInFlight StartDispatch(const Tensor&, const DispatchHandle&) override { Fail(); }
  RowsInFlight StartCombine(const Tensor&, const DispatchHandle&) override { Fail(); }

  // One instance serves every slice (the exchange is stateless).
  static ExpertExchange* Get() {
    static UnusedExpertExchange unused;
    return &unused;
  }

 private:
  [[noreturn]] static void Fail() {
    FATHOM_CHECK(false, "this test builds model slices but never runs them");
    std::abort();
  }
};

}  // namespace fathom::testing

#endif  // FATHOM_TESTS_COMMON_UNUSED_EXCHANGE_H_
