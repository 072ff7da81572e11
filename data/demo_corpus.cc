#include "data/demo_corpus.h"

#include <array>
#include <string_view>
#include <vector>

#include "data/sampler.h"

namespace fathom {
namespace {

// The seed and target size are part of the corpus' identity: changing either changes every byte, and
// tests/data/corpus_test.cc pins the result.
constexpr uint64_t kCorpusSeed = 0x5EED0F0A7D0Cull;

// Word tables. Nouns are chosen with regular plurals; verbs carry their forms explicitly.
constexpr std::array<std::string_view, 40> kNames = {
    "Ada",   "Bram", "Cora", "Dev",  "Elin", "Finn",  "Greta", "Hugo",  "Iris", "Jonas",
    "Kira",  "Leo",  "Mara", "Nico", "Olga", "Pavel", "Quinn", "Rosa",  "Sami", "Tova",
    "Uma",   "Vik",  "Wren", "Yara", "Zane", "Alma",  "Boris", "Clara", "Dora", "Emil",
    "Fiona", "Gus",  "Hana", "Ivo",  "Jana", "Karl",  "Lena",  "Milo",  "Nora", "Otto"};

constexpr std::array<std::string_view, 36> kAnimals = {
    "cat",    "dog",    "fox",   "owl",   "horse",  "goat",  "rabbit", "crow",   "bear",
    "wolf",   "duck",   "frog",  "mole",  "otter",  "sheep", "lamb",   "hen",    "pig",
    "badger", "beaver", "heron", "snake", "lizard", "camel", "donkey", "parrot", "seal",
    "whale",  "tiger",  "lion",  "zebra", "monkey", "eagle", "hawk",   "robin",  "swan"};

constexpr std::array<std::string_view, 60> kObjects = {
    "lamp",   "book",     "cup",   "spoon", "kettle", "basket",  "coat",    "hat",    "boot",   "rope",
    "key",    "lock",     "clock", "map",   "letter", "candle",  "bucket",  "ladder", "hammer", "nail",
    "bottle", "jar",      "plate", "bowl",  "chair",  "table",   "window",  "door",   "bell",   "drum",
    "flute",  "violin",   "coin",  "ring",  "stone",  "shell",   "feather", "apple",  "pear",   "plum",
    "carrot", "onion",    "loaf",  "cake",  "pie",    "blanket", "pillow",  "mirror", "comb",   "brush",
    "pencil", "notebook", "kite",  "wagon", "sled",   "boat",    "oar",     "sail",   "net",    "lantern"};

constexpr std::array<std::string_view, 36> kPlaces = {
    "garden",     "kitchen", "market", "harbor", "forest",   "meadow",  "village", "station", "library",
    "bakery",     "school",  "river",  "valley", "mountain", "island",  "castle",  "tower",   "bridge",
    "farm",       "barn",    "mill",   "square", "park",     "orchard", "cellar",  "attic",   "workshop",
    "lighthouse", "beach",   "port",   "hill",   "lake",     "pond",    "cottage", "museum",  "theater"};

constexpr std::array<std::string_view, 56> kAdjectives = {
    "old",   "new",   "small",   "large",  "quiet",  "loud",    "bright",  "dark",    "warm",     "cold",
    "happy", "sad",   "clever",  "brave",  "gentle", "quick",   "slow",    "tall",    "short",    "heavy",
    "light", "soft",  "hard",    "clean",  "dusty",  "shiny",   "rusty",   "wooden",  "golden",   "silver",
    "tiny",  "huge",  "curious", "sleepy", "hungry", "proud",   "careful", "strange", "friendly", "lonely",
    "busy",  "lazy",  "calm",    "wild",   "kind",   "patient", "noisy",   "narrow",  "wide",     "ancient",
    "fresh", "sweet", "bitter",  "round",  "square", "simple"};

constexpr std::array<std::string_view, 12> kColors = {"red",   "blue", "green", "yellow", "white",  "black",
                                                      "brown", "grey", "pink",  "orange", "purple", "gold"};

struct Verb {
  std::string_view base, past, third;
};

constexpr std::array<Verb, 44> kTransitive = {{
    {"find", "found", "finds"},
    {"carry", "carried", "carries"},
    {"paint", "painted", "paints"},
    {"build", "built", "builds"},
    {"fix", "fixed", "fixes"},
    {"open", "opened", "opens"},
    {"close", "closed", "closes"},
    {"clean", "cleaned", "cleans"},
    {"sell", "sold", "sells"},
    {"buy", "bought", "buys"},
    {"hide", "hid", "hides"},
    {"lose", "lost", "loses"},
    {"watch", "watched", "watches"},
    {"follow", "followed", "follows"},
    {"draw", "drew", "draws"},
    {"count", "counted", "counts"},
    {"wash", "washed", "washes"},
    {"lift", "lifted", "lifts"},
    {"push", "pushed", "pushes"},
    {"pull", "pulled", "pulls"},
    {"catch", "caught", "catches"},
    {"throw", "threw", "throws"},
    {"bring", "brought", "brings"},
    {"take", "took", "takes"},
    {"make", "made", "makes"},
    {"mend", "mended", "mends"},
    {"borrow", "borrowed", "borrows"},
    {"give", "gave", "gives"},
    {"keep", "kept", "keeps"},
    {"hold", "held", "holds"},
    {"feed", "fed", "feeds"},
    {"visit", "visited", "visits"},
    {"greet", "greeted", "greets"},
    {"notice", "noticed", "notices"},
    {"measure", "measured", "measures"},
    {"weigh", "weighed", "weighs"},
    {"sort", "sorted", "sorts"},
    {"pack", "packed", "packs"},
    {"fold", "folded", "folds"},
    {"polish", "polished", "polishes"},
    {"study", "studied", "studies"},
    {"guard", "guarded", "guards"},
    {"chase", "chased", "chases"},
    {"describe", "described", "describes"},
}};

constexpr std::array<Verb, 24> kIntransitive = {{
    {"sleep", "slept", "sleeps"},   {"sing", "sang", "sings"},         {"dance", "danced", "dances"},
    {"run", "ran", "runs"},         {"walk", "walked", "walks"},       {"wait", "waited", "waits"},
    {"laugh", "laughed", "laughs"}, {"smile", "smiled", "smiles"},     {"work", "worked", "works"},
    {"read", "read", "reads"},      {"rest", "rested", "rests"},       {"swim", "swam", "swims"},
    {"climb", "climbed", "climbs"}, {"jump", "jumped", "jumps"},       {"whistle", "whistled", "whistles"},
    {"cook", "cooked", "cooks"},    {"write", "wrote", "writes"},      {"listen", "listened", "listens"},
    {"think", "thought", "thinks"}, {"travel", "traveled", "travels"}, {"hum", "hummed", "hums"},
    {"paint", "painted", "paints"}, {"play", "played", "plays"},       {"dream", "dreamed", "dreams"},
}};

constexpr std::array<std::string_view, 24> kAdverbs = {
    "slowly",  "quickly", "quietly",   "loudly",   "carefully",  "happily", "sadly",   "gently",
    "proudly", "calmly",  "patiently", "suddenly", "softly",     "bravely", "eagerly", "kindly",
    "neatly",  "boldly",  "warmly",    "politely", "cheerfully", "briskly", "lazily",  "wisely"};

constexpr std::array<std::string_view, 24> kProfessions = {
    "baker",  "farmer", "teacher", "doctor",    "sailor", "painter", "builder", "gardener",
    "miller", "weaver", "potter",  "carpenter", "tailor", "fisher",  "singer",  "writer",
    "grocer", "driver", "nurse",   "pilot",     "brewer", "jeweler", "printer", "keeper"};

constexpr std::array<std::string_view, 14> kPrepositions = {"in",    "near",   "behind",  "under",  "beside",
                                                            "above", "inside", "outside", "across", "around",
                                                            "past",  "toward", "through", "by"};

constexpr std::array<std::string_view, 7> kDays = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                                   "Friday", "Saturday", "Sunday"};
constexpr std::array<std::string_view, 12> kMonths = {"January",   "February", "March",    "April",
                                                      "May",       "June",     "July",     "August",
                                                      "September", "October",  "November", "December"};
constexpr std::array<std::string_view, 8> kTimes = {"in the morning", "at noon",     "in the evening",
                                                    "at night",       "before dawn", "after lunch",
                                                    "before supper",  "at sunset"};
constexpr std::array<std::string_view, 10> kFeelings = {
    "glad", "tired", "surprised", "worried", "pleased", "curious", "puzzled", "calm", "excited", "sorry"};
constexpr std::array<std::string_view, 13> kNumberWords = {"zero", "one",    "two",   "three", "four",
                                                           "five", "six",    "seven", "eight", "nine",
                                                           "ten",  "eleven", "twelve"};

// Deterministic on every platform: splitmix64 counter stream and integer arithmetic only (no
// std::*_distribution, whose algorithms are implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() { return SplitMix64(state_++); }
  int64_t Below(int64_t n) {  // uniform in [0, n)
    return static_cast<int64_t>((static_cast<unsigned __int128>(Next()) * static_cast<uint64_t>(n)) >> 64);
  }
  int64_t Between(int64_t lo, int64_t hi) { return lo + Below(hi - lo + 1); }  // inclusive
  template <class A>
  const typename A::value_type& Pick(const A& a) {
    return a[static_cast<size_t>(Below(static_cast<int64_t>(a.size())))];
  }

 private:
  uint64_t state_;
};

std::string Plural(std::string_view noun) {
  std::string s(noun);
  auto ends = [&](std::string_view suffix) { return s.size() >= suffix.size() && s.ends_with(suffix); };
  if (ends("s") || ends("x") || ends("ch") || ends("sh")) return s + "es";
  if (ends("y") && s.size() >= 2 &&
      std::string_view("aeiou").find(s[s.size() - 2]) == std::string_view::npos) {
    return s.substr(0, s.size() - 1) + "ies";
  }
  return s + "s";
}

std::string Capitalize(std::string_view s) {
  std::string out(s);
  if (!out.empty() && out[0] >= 'a' && out[0] <= 'z') out[0] = static_cast<char>(out[0] - 'a' + 'A');
  return out;
}

std::string Article(std::string_view word) {
  return std::string_view("aeiou").find(word[0]) != std::string_view::npos ? "an" : "a";
}

// "three" for small counts, digits otherwise, the way prose writes numbers.
std::string Count(int64_t n) {
  return n < static_cast<int64_t>(kNumberWords.size()) ? std::string(kNumberWords[static_cast<size_t>(n)])
                                                       : std::to_string(n);
}

// One chapter's cast and setting; sentences refer back to them.
struct Scene {
  std::string hero, friend_name, place, animal, object, profession;
};

class ChapterWriter {
 public:
  ChapterWriter(Rng& rng, std::string& out) : rng_(rng), out_(out) {}

  void Write(int64_t chapter) {
    Scene s;
    s.hero = rng_.Pick(kNames);
    do {
      s.friend_name = rng_.Pick(kNames);
    } while (s.friend_name == s.hero);
    s.place = rng_.Pick(kPlaces);
    s.animal = rng_.Pick(kAnimals);
    s.object = rng_.Pick(kObjects);
    s.profession = rng_.Pick(kProfessions);
    out_ += "Chapter " + std::to_string(chapter) + ": The " + Capitalize(rng_.Pick(kAdjectives)) + " " +
            Capitalize(s.object) + "\n\n";
    int64_t paragraphs = rng_.Between(1, 3);
    for (int64_t p = 0; p < paragraphs; ++p) {
      int64_t sentences = rng_.Between(3, 7);
      for (int64_t i = 0; i < sentences; ++i) {
        if (i) out_ += ' ';
        Sentence(s);
      }
      out_ += '\n';
    }
    out_ += '\n';
  }

 private:
  std::string Np(std::string_view noun) {  // "the quiet lamp" or "the lamp"
    if (rng_.Below(2)) return "the " + std::string(rng_.Pick(kAdjectives)) + " " + std::string(noun);
    return "the " + std::string(noun);
  }

  void Sentence(const Scene& s) {
    switch (rng_.Below(16)) {
      case 0: {
        const Verb& v = rng_.Pick(kTransitive);
        out_ += s.hero + " " + std::string(v.past) + " " + Np(rng_.Pick(kObjects)) + " " +
                std::string(rng_.Pick(kPrepositions)) + " the " + s.place + ".";
        break;
      }
      case 1: {
        std::string adj1(rng_.Pick(kAdjectives)), adj2(rng_.Pick(kAdjectives));
        out_ += "The " + s.object + " was " + adj1 + " and " + adj2 + ".";
        break;
      }
      case 2: {
        int64_t year = rng_.Between(1820, 2020), n = rng_.Between(2, 40);
        out_ += "In " + std::string(rng_.Pick(kMonths)) + " " + std::to_string(year) + ", " + s.hero +
                " moved to the " + s.place + " with " + Count(n) + " " + Plural(rng_.Pick(kAnimals)) + ".";
        break;
      }
      case 3: {
        const Verb& v = rng_.Pick(kTransitive);
        out_ += s.hero + " said, \"I will " + std::string(v.base) + " " + Np(s.object) + " " +
                std::string(rng_.Pick(kTimes)) + ".\"";
        break;
      }
      case 4: {
        int64_t n = rng_.Between(4, 60), m = rng_.Between(2, n - 1);
        out_ += "There were " + Count(n) + " " + Plural(rng_.Pick(kObjects)) + " " +
                std::string(rng_.Pick(kPrepositions)) + " the " + s.place + ", and " + Count(m) +
                " of them were " + std::string(rng_.Pick(kColors)) + ".";
        break;
      }
      case 5: {
        int64_t a = rng_.Between(1, 99), b = rng_.Between(1, 99);
        out_ += s.friend_name + " asked, \"What is " + std::to_string(a) + " plus " + std::to_string(b) +
                "?\" " + s.hero + " answered, \"" + std::to_string(a) + " plus " + std::to_string(b) +
                " is " + std::to_string(a + b) + ".\"";
        break;
      }
      case 6: {
        int64_t a = rng_.Between(2, 12), b = rng_.Between(2, 12);
        out_ += Capitalize(Count(a)) + " times " + Count(b) + " is " + std::to_string(a * b) + ", so " +
                s.hero + " packed " + std::to_string(a * b) + " " + Plural(rng_.Pick(kObjects)) + " in " +
                Count(a) + " rows of " + Count(b) + ".";
        break;
      }
      case 7: {
        const Verb& v = rng_.Pick(kIntransitive);
        out_ += "Every " + std::string(rng_.Pick(kDays)) + ", the " + s.animal + " " + std::string(v.third) +
                " " + std::string(rng_.Pick(kAdverbs)) + " " + std::string(rng_.Pick(kPrepositions)) +
                " the " + s.place + ".";
        break;
      }
      case 8: {
        std::string adj(rng_.Pick(kAdjectives));
        const Verb& v = rng_.Pick(kIntransitive);
        out_ += "Why did the " + s.animal + " " + std::string(v.base) + "? Because it was " + adj + ".";
        break;
      }
      case 9: {
        int64_t n = rng_.Between(2, 9), m = rng_.Between(2, 9);
        std::string third(rng_.Pick(kObjects));
        out_ += s.friend_name + " bought " + Count(n) + " " + Plural(rng_.Pick(kObjects)) + ", " + Count(m) +
                " " + Plural(rng_.Pick(kObjects)) + " and " + Article(third) + " " + third + ".";
        break;
      }
      case 10: {
        const Verb& v = rng_.Pick(kTransitive);
        int64_t n = rng_.Between(2, 30);
        out_ += "The " + s.profession + " " + std::string(v.past) + " " + Count(n) + " " +
                Plural(rng_.Pick(kObjects)) + " " + std::string(rng_.Pick(kTimes)) + ".";
        break;
      }
      case 11: {
        std::string a1(rng_.Pick(kAdjectives)), a2(rng_.Pick(kAdjectives));
        out_ += "If the " + s.object + " is " + a1 + ", then the " + s.animal + " is " + a2 + ".";
        break;
      }
      case 12: {
        int64_t price = rng_.Between(2, 25), k = rng_.Between(2, 9);
        out_ += "One " + s.object + " costs " + std::to_string(price) + " coins, so " + Count(k) + " " +
                Plural(s.object) + " cost " + std::to_string(price * k) + " coins.";
        break;
      }
      case 13: {
        const Verb& v = rng_.Pick(kIntransitive);
        out_ += s.hero + " and " + s.friend_name + " " + std::string(v.past) + " " +
                std::string(rng_.Pick(kAdverbs)) + " until the " + s.animal + " came back.";
        break;
      }
      case 14: {
        out_ += s.hero + " felt " + std::string(rng_.Pick(kFeelings)) + ", because the " + s.profession +
                " had " + std::string(rng_.Pick(kTransitive).past) + " the " + s.object + ".";
        break;
      }
      default: {
        int64_t h = rng_.Between(1, 12), mins = rng_.Below(4) * 15;
        std::string clock = std::to_string(h) + ":" + (mins ? std::to_string(mins) : "00");
        out_ += "At " + clock + ", the " + s.profession + " met " + s.hero + " at the " + s.place + ".";
        break;
      }
    }
  }

  Rng& rng_;
  std::string& out_;
};

std::string GenerateCorpus() {
  std::string out;
  out.reserve(static_cast<size_t>(kDemoCorpusBytes) + 4096);
  Rng rng(kCorpusSeed);
  ChapterWriter writer(rng, out);
  // Whole chapters until the target is passed, then cut at the target: the corpus is a stream of bytes,
  // and a fixed length keeps its size a documented constant.
  for (int64_t chapter = 1; static_cast<int64_t>(out.size()) < kDemoCorpusBytes; ++chapter) {
    writer.Write(chapter);
  }
  out.resize(static_cast<size_t>(kDemoCorpusBytes));
  return out;
}

}  // namespace

const std::string& DemoCorpus() {
  static const std::string* const corpus = new std::string(GenerateCorpus());
  return *corpus;
}

std::vector<std::string_view> DemoCorpusChapters(std::string_view corpus) {
  constexpr std::string_view kOpening = "Chapter ";
  std::vector<size_t> starts;
  for (size_t p = corpus.find(kOpening); p != std::string_view::npos; p = corpus.find(kOpening, p + 1)) {
    if (p == 0 || (p >= 2 && corpus[p - 1] == '\n' && corpus[p - 2] == '\n')) starts.push_back(p);
  }
  if (starts.empty() || starts[0] != 0) starts.insert(starts.begin(), 0);  // text before the first chapter
  std::vector<std::string_view> chapters;
  for (size_t i = 0; i < starts.size(); ++i) {
    const size_t end = i + 1 < starts.size() ? starts[i + 1] : corpus.size();
    if (end > starts[i]) chapters.push_back(corpus.substr(starts[i], end - starts[i]));
  }
  return chapters;
}

}  // namespace fathom
