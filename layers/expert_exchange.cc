#include "layers/expert_exchange.h"

#include "framework/check.h"

namespace fathom {

RowsInFlight::RowsInFlight(Tensor done) : done_(std::move(done)) {}

RowsInFlight::RowsInFlight(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RowsInFlight& RowsInFlight::operator=(RowsInFlight&& other) noexcept {
  if (this != &other) {
    if (impl_) impl_->Wait();  // never abandon a movement with its buffers
    impl_ = std::move(other.impl_);
    done_ = std::move(other.done_);
    waited_ = other.waited_;
  }
  return *this;
}

RowsInFlight::~RowsInFlight() {
  if (impl_) impl_->Wait();
}

Tensor RowsInFlight::Wait() {
  FATHOM_CHECK(!waited_, "[expert exchange] a movement of rows waited for twice");
  waited_ = true;
  if (impl_) {
    done_ = impl_->Wait();
    impl_.reset();
  }
  return std::move(done_);
}

}  // namespace fathom
