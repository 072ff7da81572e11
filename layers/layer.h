// The contract every layer follows (DESIGN.md idea 1):
//
//   Tensor Forward(int mb, const Tensor& x);       saves what the backward needs under micro-batch `mb`
//   Tensor BackwardInput(int mb, const Tensor& dy); dgrad: returns dx (overwritten, a fresh tensor) and
//                                                   keeps what the weight gradient needs
//   void BackwardWeight(int mb);                    wgrad: accumulates (+=) into the ParamTable's grads
//                                                   and drops everything saved for `mb`
//
// Activations are (B, T, C) tensors in the table's dtype (f32 or f64 on CPU). Parameter gradients
// accumulate (+=); activation gradients are returned fresh. Several micro-batches may be in flight at
// once (a pipeline schedule), so saved state is keyed by micro-batch id. Calls for one micro-batch come
// in the order Forward, BackwardInput, BackwardWeight.
#ifndef FATHOM_LAYERS_LAYER_H_
#define FATHOM_LAYERS_LAYER_H_

#include <algorithm>
#include <map>
#include <vector>

#include "framework/check.h"

namespace fathom {

// Every layer's store of saved activations on this thread, so that a pass that runs forwards only
// (evaluation) can drop what one micro-batch saved in every layer: DropSavedActivations(mb).
class SavedActivationStore {
 public:
  virtual ~SavedActivationStore() { Unregister(); }
  virtual void Drop(int mb) = 0;

 protected:
  SavedActivationStore() { Registry().push_back(this); }
  SavedActivationStore(const SavedActivationStore&) = delete;
  SavedActivationStore& operator=(const SavedActivationStore&) = delete;

 private:
  friend void DropSavedActivations(int mb);
  static std::vector<SavedActivationStore*>& Registry() {
    static thread_local std::vector<SavedActivationStore*> stores;
    return stores;
  }
  void Unregister() {
    auto& r = Registry();
    r.erase(std::remove(r.begin(), r.end(), this), r.end());
  }
};

// Drops micro-batch `mb`'s saved activations in every layer created on this thread (a forward-only pass
// ends with it; the training passes drop theirs in BackwardWeight).
inline void DropSavedActivations(int mb) {
  for (SavedActivationStore* s : SavedActivationStore::Registry()) s->Drop(mb);
}

// Saved activations of one layer, keyed by micro-batch id.
template <class Ctx>
class SavedByMicroBatch : public SavedActivationStore {
 public:
  SavedByMicroBatch() = default;
  Ctx& Put(int mb) {
    FATHOM_CHECK(!map_.count(mb), "micro-batch ", mb, " already has saved activations");
    return map_[mb];
  }
  Ctx& Get(int mb) {
    auto it = map_.find(mb);
    FATHOM_CHECK(it != map_.end(), "no saved activations for micro-batch ", mb);
    return it->second;
  }
  void Drop(int mb) override { map_.erase(mb); }
  bool Has(int mb) const { return map_.count(mb) != 0; }
  size_t size() const { return map_.size(); }

 private:
  std::map<int, Ctx> map_;
};

}  // namespace fathom

#endif  // FATHOM_LAYERS_LAYER_H_
