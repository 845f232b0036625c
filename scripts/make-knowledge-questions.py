#!/usr/bin/env python3
"""Writes the outside-knowledge questions of the Fashion-MNIST classes (issue 6) from the WordNet
glosses in the text-corpus data set, by the fixed rules below (docs/methods.md repeats them).

    scripts/make-knowledge-questions.py datasets/text-corpus/train.jsonl > data/artifacts/fashion-knowledge-questions.jsonl

The answers are in the language model's pretraining text (the glosses are always in the train
split) and never in the captions the transfer methods are tuned on ("this is a sandal.").

Which gloss: the class's WordNet synset (the clothing sense), named here by its gloss's head
word and first words, because a noun has several senses and only one is the garment. Rules,
applied to that gloss with parentheticals removed:
  genus:    "what kind of thing is it?"  -> the last word before the first of
            that/with/for/of/worn/consisting/extending/designed/used/which (the genus noun);
  cover:    "what does it cover?"        -> the word after "covers"/"covering", skipping the/whole/each;
  fastened: "what is it fastened to?"    -> the word after "fastened by <w> to the";
  pulled:   "what is it pulled over?"    -> the word after "pulling it over the";
  for:      "who is it for?"             -> the word after "for a".
Each rule that matches gives one question; the answer is always one word. An answer that is a
word of some class's caption ("this is a <class>.") is dropped: a T-shirt taken for a shirt
would answer "shirt" right without any knowledge (the knowledge_questions protocol refuses such
answers too).
"""
import json
import re
import sys

# class name (as captions spell it) -> (gloss head word, the gloss's first words)
SENSES = {
    "t-shirt": ("jersey", "a close-fitting pullover shirt"),
    "trouser": ("trouser", "(usually in the plural) a garment extending"),
    "pullover": ("pullover", "a sweater that is put on"),
    "dress": ("dress", "a one-piece garment for a woman"),
    "coat": ("coat", "an outer garment that has sleeves"),
    "sandal": ("sandal", "a shoe consisting of a sole"),
    "shirt": ("shirt", "a garment worn on the upper half"),
    "sneaker": ("gym shoe", "a canvas shoe with a pliable rubber sole"),
    "bag": ("bag", "a flexible container with a single opening"),
    "boot": ("boot", "footwear that covers the whole foot"),
}
STOP = {"that", "with", "for", "of", "worn", "consisting", "extending", "designed", "used", "which"}
RULES = [
    ("what does it cover?", re.compile(r"\b(?:covers|covering)\s+(?:(?:the|whole|each)\s+)*([a-z]+)")),
    ("what is it fastened to?", re.compile(r"\bfastened by [a-z]+ to the ([a-z]+)")),
    ("what is it pulled over?", re.compile(r"\bpulling it over the ([a-z]+)")),
    ("who is it for?", re.compile(r"\bfor an? ([a-z]+)")),
]


CAPTION_WORDS = {"this", "is", "a"} | set(SENSES)


def emit(name, question, answer, gloss):
    if answer in CAPTION_WORDS:
        print(f"{name}: {question!r} dropped: its answer {answer!r} is a caption word", file=sys.stderr)
        return
    print(json.dumps({"class": name, "question": question, "answer": answer, "gloss": gloss}))


def main(corpus):
    glosses = {}
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            head, _, gloss = doc["text"].partition(": ")
            glosses.setdefault(head, []).append(gloss)
    for name, (head, start) in SENSES.items():
        found = [g for g in glosses.get(head, []) if g.startswith(start)]
        if len(found) != 1:
            sys.exit(f"{corpus}: {len(found)} glosses of {head!r} start with {start!r} (expected 1)")
        gloss = re.sub(r"\([^)]*\)\s*", "", found[0].split(";")[0]).strip()
        words = re.findall(r"[a-z-]+", gloss.lower())
        genus = None
        for w in words:
            if w in STOP:
                break
            genus = w
        emit(name, "what kind of thing is it?", genus, found[0])
        for question, rule in RULES:
            m = rule.search(gloss.lower())
            if m:
                emit(name, question, m.group(1), found[0])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
