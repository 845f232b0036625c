// The tabular plugin through the host: rows of a CSV file, numeric standardisation and
// categorical vocabularies fitted on the rows given to fit only, bad cells named by file, line
// and column, perturbations, and one token per column from the FT-Transformer encoder.
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "modality_fixture.hpp"

namespace {

struct TabularFixture : ModalityFixture {
  TabularFixture() : ModalityFixture("tabular") {}

  void SetUp() override {
    ModalityFixture::SetUp();
    std::ofstream(dir / "t.csv") << "size,colour,weight\n"
                                    "1.0,red,10\n"
                                    "3.0,blue,30\n"
                                    "\"5.0\",\"red\",50\n"
                                    "100.0,green,1000\n";
  }

  modalkit::RawValue decode(const modalkit::ModalityPlugin& p, const std::string& ref) { return decode_with(p, ref, dir); }
};

TEST_F(TabularFixture, StandardisationAndVocabularyComeFromTheFittedRowsOnly) {
  auto tab = make({{"categorical", {"colour"}}});
  // Rows 0-2 are "train"; row 3 (an outlier with an unseen colour) is not.
  std::vector<modalkit::RawValue> train{decode(*tab, "t.csv#0"), decode(*tab, "t.csv#1"), decode(*tab, "t.csv#2")};
  tab->fit(train);
  // size: mean 3, population std sqrt(8/3); weight: mean 30, std sqrt(800/3). Tokens: size,
  // weight (numeric), then colour: vocabulary {blue, red} sorted → blue = 1, red = 2.
  auto f = tab->featurize(train[2]);
  ASSERT_EQ(f.numel(), 3);
  EXPECT_NEAR(f[0].item<double>(), 2.0 / std::sqrt(8.0 / 3.0), 1e-5);
  EXPECT_NEAR(f[1].item<double>(), 20.0 / std::sqrt(800.0 / 3.0), 1e-5);
  EXPECT_EQ(f[2].item<double>(), 2.0);
  auto unseen = tab->featurize(decode(*tab, "t.csv#3"));
  EXPECT_EQ(unseen[2].item<double>(), 0.0);  // green: not in train → unknown
  EXPECT_NEAR(unseen[0].item<double>(), 97.0 / std::sqrt(8.0 / 3.0), 1e-3);

  // The fitted state restores into a fresh instance, and the encoder has one token per column.
  auto fresh = make({{"categorical", {"colour"}}});
  fresh->load_fitted_state(tab->fitted_state());
  EXPECT_TRUE(fresh->featurize(train[1]).equal(tab->featurize(train[1])));
  auto net = fresh->make_encoder();
  auto seq = net->forward(fresh->collate({tab->featurize(train[0]), tab->featurize(train[1])}));
  EXPECT_EQ(seq.x.sizes(), (std::vector<int64_t>{2, 3, 16}));
  EXPECT_TRUE(seq.mask.all().item<bool>());
}

TEST_F(TabularFixture, ColumnsCanBeChosen) {
  auto tab = make({{"columns", {"weight"}}});
  auto raw = decode(*tab, "t.csv#1");
  tab->fit({raw});
  EXPECT_EQ(tab->featurize(raw).numel(), 1);
  auto error = make_error({{"columns", {"weight"}}, {"categorical", {"colour"}}});
  EXPECT_NE(error.find("/modalities/tabular/config/categorical"), std::string::npos) << error;
}

TEST_F(TabularFixture, BadCellsAndReferencesAreNamed) {
  std::ofstream(dir / "bad.csv") << "a,b\n1,2\n3,\nx,4\nnan,5\n1,2,3\n";
  auto tab = make({});
  auto error = decode_error_with(*tab, "bad.csv#0", dir);  // the whole file parses first: ragged row 6
  EXPECT_NE(error.find("bad.csv:6"), std::string::npos) << error;
  EXPECT_NE(error.find("3 cells, expected 2"), std::string::npos) << error;

  std::ofstream(dir / "cells.csv") << "a,b\n1,2\n3,\nx,4\nnan,5\n";
  error = decode_error_with(*tab, "cells.csv#1", dir);
  EXPECT_NE(error.find("cells.csv:3"), std::string::npos) << error;
  EXPECT_NE(error.find("column \"b\""), std::string::npos) << error;
  error = decode_error_with(*tab, "cells.csv#2", dir);
  EXPECT_NE(error.find("cells.csv:4"), std::string::npos) << error;
  EXPECT_NE(error.find("\"x\""), std::string::npos) << error;
  error = decode_error_with(*tab, "cells.csv#3", dir);
  EXPECT_NE(error.find("expected a finite number, found \"nan\""), std::string::npos) << error;
  error = decode_error_with(*tab, "cells.csv#9", dir);
  EXPECT_NE(error.find("4 data rows"), std::string::npos) << error;
  error = decode_error_with(*tab, "cells.csv", dir);
  EXPECT_NE(error.find("file.csv#ROW"), std::string::npos) << error;
  error = decode_error_with(*tab, "missing.csv#0", dir);
  EXPECT_NE(error.find("missing.csv"), std::string::npos) << error;
  // A configured column the file lacks.
  error = decode_error_with(*make({{"columns", {"a", "zz"}}}), "cells.csv#0", dir);
  EXPECT_NE(error.find("no column \"zz\""), std::string::npos) << error;
}

TEST_F(TabularFixture, PerturbationsGrowWithLevelAndAreRepeatable) {
  auto tab = make({{"categorical", {"colour"}}});
  std::vector<modalkit::RawValue> train{decode(*tab, "t.csv#0"), decode(*tab, "t.csv#1"), decode(*tab, "t.csv#2")};
  tab->fit(train);
  auto changed = [&](double level, uint64_t seed) {
    std::mt19937_64 rng(seed);
    int n = 0;
    for (int i = 0; i < 200; ++i) {
      auto f = tab->featurize(tab->perturb(train[1], level, rng));
      n += int((f != tab->featurize(train[1])).sum().item<int64_t>());
    }
    return n;
  };
  EXPECT_EQ(changed(0.0, 1), 0);
  EXPECT_LT(changed(0.2, 1), changed(0.8, 1));
  EXPECT_EQ(changed(0.5, 4), changed(0.5, 4));
  std::mt19937_64 rng(2);
  auto dropped = tab->featurize(tab->perturb(train[2], 1.0, rng));
  EXPECT_EQ(dropped[0].item<double>(), 0.0);  // the train mean, standardised
  EXPECT_EQ(dropped[2].item<double>(), 0.0);  // the unknown category
}

}  // namespace
