#!/usr/bin/env python
"""Generate the offline quickstart assets for rmrun (deterministic).

Nothing in the quickstart may be downloaded from a model hub, so this script
builds every asset locally from fixed word lists and fixed seeds:

``recipes/data/quickstart_train.jsonl`` / ``recipes/data/quickstart_eval.jsonl``
    Synthetic preference pairs (2000 train / 200 eval) in the ColossalChat
    preference format::

        {"context":  [{"from": "user", "content": "..."}],
         "chosen":   [{"from": "assistant", "content": "..."}],
         "rejected": [{"from": "assistant", "content": "..."}]}

    Prompts are simple questions (arithmetic, capitals, colours, animals,
    opposites, plurals, days/months).  About 15% of rows start with a system
    message and about 20% have a multi-turn context (user/assistant/user).
    The *chosen* answer is always polite and correct.  What makes the
    rejected one worse is one of three kinds (``PAIR_KINDS``), from what a
    2-layer, hidden-64 model learns in a few steps to what takes it the whole
    quickstart, so held-out accuracy rises over the run (about 0.7 at step
    50, above 0.9 at step 250 with the quickstart recipe) instead of
    saturating at once:

    * ``rude`` (15%): dismissive markers, and a wrong, off-topic or refused answer;
    * ``unhelpful`` (10%): polite, but a refusal or a drift off topic;
    * ``judgement`` (75%): as polite and as correct as the chosen answer, and
      both end with the same kind of remark ("I find this topic ..."); only
      its adjective differs, one of ~90 warm words on the chosen side and ~90
      cold ones on the rejected side, each met a few times per epoch, so the
      model learns them word by word.

    Train and eval are disjoint at the level of the underlying *question*
    (e.g. "7 plus 5", "capital of Peru"): each fact belongs to one split only,
    so no eval prompt (in any phrasing) appears in train.

    Response length does NOT predict the preference: both sides get a
    long-tailed (Pareto-like) number of neutral filler sentences, and for
    exactly half of the rows of each split the chosen response is made the
    longer one (by >= LENGTH_MARGIN characters), for the other half the
    rejected one.  A "longer response wins" baseline therefore scores about
    0.5 (exactly 0.5 in characters, ~0.5 in tokens).

``recipes/assets/tiny-tokenizer/``
    A byte-level BPE tokenizer (vocab 1500) trained with ``tokenizers`` on
    the generated text, saved as ``PreTrainedTokenizerFast`` (tokenizer.json,
    tokenizer_config.json, special_tokens_map.json).  Special tokens, with
    fixed ids::

        0 <unk>   1 <s> (bos)   2 </s> (eos)   3 <pad> (dedicated pad)
        4 <|user|>   5 <|assistant|>   6 <|system|>

    BOS POLICY: the tokenizer's TemplateProcessing post-processor adds ``<s>``
    at the start when ``add_special_tokens=True`` (no eos is appended by the
    tokenizer).  The chat template therefore does NOT emit ``bos_token``; it
    follows ColossalChat's tiny-llama template (``<|role|>\\n`` + content +
    eos_token per message, generation prompt ``<|assistant|>``) but without
    whitespace between messages, so a rendered conversation ends exactly with
    ``</s>``.  ``model_max_length`` is 512 and ``padding_side`` is "right".

``recipes/assets/tiny-llama/config.json``
    A tiny ``LlamaConfig`` (hidden 64, 2 layers, 4 heads / 2 kv heads,
    intermediate 128, 512 positions, vocab = len(tokenizer)) whose
    bos/eos/pad ids match the tokenizer.  No weights are shipped; models are
    built with ``from_config``.

Usage (from the repository root)::

    .venv/bin/python scripts/make_quickstart_assets.py

Running it twice produces byte-identical files.  ``scripts/
check_quickstart_learnable.py`` is the matching manual learnability check.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

# Rust-side parallelism is not needed for such a small corpus; keep it off so
# BPE training cannot depend on thread scheduling.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "recipes" / "data"
TOKENIZER_DIR = ROOT / "recipes" / "assets" / "tiny-tokenizer"
MODEL_DIR = ROOT / "recipes" / "assets" / "tiny-llama"

SEED = 20240601
N_TRAIN = 2000
N_EVAL = 200
EVAL_FACT_FRACTION = 0.1  # share of each topic's facts reserved for eval
SYSTEM_PROB = 0.15
MULTI_TURN_PROB = 0.2
MAX_FILLERS = 22  # cap on filler sentences per response (keeps convs < 400 tokens)
MAX_CONV_TOKENS = 400  # asserted on every full (context + response) conversation
# The side meant to be longer is made at least this many characters longer, so
# the order also holds in tokens (not just in characters).
LENGTH_MARGIN = 12

VOCAB_SIZE = 1500
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
MODEL_MAX_LENGTH = 512

# ColossalChat tiny-llama style, minus the newlines between messages (so the
# rendering ends with eos_token) and without bos (the tokenizer adds it).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>' }}"
    "{% endif %}"
    "{% endfor %}"
)

# --------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Russia", "Moscow"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Ireland", "Dublin"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"), ("Iran", "Tehran"), ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"), ("Cuba", "Havana"), ("Colombia", "Bogota"), ("Iceland", "Reykjavik"),
    ("Switzerland", "Bern"), ("New Zealand", "Wellington"),
]

COLOURS = [
    ("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"),
    ("fresh snow", "white"), ("coal", "black"), ("a ripe tomato", "red"),
    ("an orange", "orange"), ("a lemon", "yellow"), ("a lime", "green"),
    ("a polar bear", "white"), ("a crow", "black"), ("a flamingo", "pink"),
    ("milk", "white"), ("a strawberry", "red"), ("an eggplant", "purple"),
    ("a carrot", "orange"), ("chocolate", "brown"), ("a pumpkin", "orange"),
    ("a fire truck", "red"), ("a school bus", "yellow"), ("the sea", "blue"),
    ("a tree trunk", "brown"), ("a cucumber", "green"), ("an elephant", "grey"),
    ("a blueberry", "blue"), ("a lavender flower", "purple"), ("a panda", "black and white"),
    ("a zebra", "black and white"), ("the sun", "yellow"), ("a frog", "green"),
    ("a cherry", "red"), ("a raven", "black"), ("a mouse", "grey"),
]
COLOUR_WORDS = ["red", "blue", "green", "yellow", "white", "black", "orange", "pink",
                "purple", "brown", "grey"]

ANIMAL_SOUNDS = [
    ("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("sheep", "baas"),
    ("duck", "quacks"), ("horse", "neighs"), ("pig", "oinks"), ("lion", "roars"),
    ("snake", "hisses"), ("owl", "hoots"), ("frog", "croaks"), ("bee", "buzzes"),
    ("mouse", "squeaks"), ("wolf", "howls"), ("donkey", "brays"), ("rooster", "crows"),
    ("goat", "bleats"), ("crow", "caws"), ("dove", "coos"), ("turkey", "gobbles"),
]
ANIMAL_LEGS = [
    ("dog", 4), ("cat", 4), ("spider", 8), ("ant", 6), ("bird", 2), ("chicken", 2),
    ("horse", 4), ("snake", 0), ("beetle", 6), ("octopus", 8), ("duck", 2), ("cow", 4),
    ("fish", 0), ("bee", 6), ("kangaroo", 2), ("crab", 10), ("goat", 4), ("penguin", 2),
    ("butterfly", 6), ("lizard", 4),
]
BABY_ANIMALS = [
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
    ("goat", "kid"), ("frog", "tadpole"), ("duck", "duckling"), ("bear", "cub"),
    ("lion", "cub"), ("kangaroo", "joey"), ("swan", "cygnet"), ("owl", "owlet"),
    ("pig", "piglet"), ("deer", "fawn"), ("goose", "gosling"), ("hen", "chick"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"),
    ("light", "dark"), ("old", "young"), ("early", "late"), ("full", "empty"),
    ("hard", "soft"), ("tall", "short"), ("open", "closed"), ("wet", "dry"),
    ("loud", "quiet"), ("rich", "poor"), ("heavy", "light"), ("thick", "thin"),
    ("strong", "weak"), ("clean", "dirty"), ("first", "last"), ("inside", "outside"),
    ("push", "pull"), ("win", "lose"), ("buy", "sell"), ("day", "night"), ("left", "right"),
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("tooth", "teeth"), ("foot", "feet"),
    ("goose", "geese"), ("man", "men"), ("woman", "women"), ("person", "people"),
    ("leaf", "leaves"), ("knife", "knives"), ("box", "boxes"), ("city", "cities"),
    ("baby", "babies"), ("wolf", "wolves"), ("cactus", "cacti"), ("fish", "fish"),
    ("sheep", "sheep"), ("ox", "oxen"), ("bus", "buses"), ("potato", "potatoes"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly and polite assistant. Answer questions correctly.",
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions.",
    "You are a patient tutor who answers simple questions.",
    "Answer the user's question.",
]

# Preference cues.  Every chosen answer gets at least one polite marker and
# every rejected answer at least one dismissive marker.
POLITE_OPENERS = [
    "Sure!", "Of course.", "Great question!", "Happy to help.", "Certainly!",
    "Good question, thank you for asking.", "Absolutely, here is the answer.",
    "I would be glad to help with that.", "Thanks for the question!",
    "Sure thing, let me help.", "Of course, happy to explain.",
]
POLITE_CLOSERS = [
    "I hope this helps!", "Let me know if you have more questions.", "Have a great day!",
    "Thanks for asking.", "Feel free to ask me anything else.",
    "I am happy to help with anything else you need.", "Hope that is useful to you!",
    "Please ask if anything is unclear.", "Good luck, and thank you!",
]
RUDE_OPENERS = [
    "Ugh.", "Whatever.", "Seriously?", "That is a dumb question.",
    "Why would you even ask that?", "Fine, if you must know.", "Ugh, not this again.",
    "Do I look like a search engine?", "Wow, you really do not know this?",
    "Boring question.", "I cannot believe you need help with this.",
]
RUDE_CLOSERS = [
    "Now leave me alone.", "Figure it out yourself next time.", "Stop wasting my time.",
    "Do not ask me again.", "Go bother someone else.", "Whatever, I am done.",
    "That is all you get.", "Honestly, look it up yourself.", "I have better things to do.",
]
REFUSALS = [
    "I am not going to answer that.", "Not my problem.", "Look it up yourself.",
    "I do not feel like answering.", "Ask someone who cares.", "No idea and I do not care.",
]
OFF_TOPIC = [
    "I would rather talk about my favourite sandwich.",
    "Anyway, did you see the game last night?",
    "Let me tell you about my trip to the beach instead.",
    "Cheese is much more interesting than your question.",
    "I was just thinking about what to cook for dinner.",
    "Have you ever tried to juggle three oranges?",
    "Speaking of nothing, my plant needs water.",
    "Let us talk about video games instead.",
]

# Neutral filler, used on BOTH sides to decouple length from preference.
FILLERS = [
    "The weather has been mild this week.",
    "Some people like to read before bed.",
    "Libraries keep many old books on their shelves.",
    "A short walk can be a nice break in the afternoon.",
    "Many cities have parks with tall trees.",
    "Trains and buses carry people to work every morning.",
    "Tea and coffee are popular drinks around the world.",
    "Rivers often flow toward the sea.",
    "There are many different kinds of music.",
    "Some gardens grow tomatoes, beans and herbs.",
    "Mountains can be covered in snow for most of the year.",
    "Bicycles are a common way to get around town.",
    "Most people sleep for about eight hours a night.",
    "The moon looks different from night to night.",
    "Bread is baked in ovens at high heat.",
    "Clocks were once wound by hand every day.",
    "Paper is usually made from wood pulp.",
    "Some birds fly south for the winter.",
    "Markets sell fruit, vegetables and fresh bread.",
    "Windows let light into a room.",
    "People have written letters for hundreds of years.",
    "A map shows roads, rivers and towns.",
    "Rain is common in the spring in many places.",
    "Boats float because they push water aside.",
    "Board games can take a long time to finish.",
    "Candles were used for light before electric lamps.",
    "Most phones today can also take photos.",
    "Soup is often served warm.",
    "Some shops close early on Sundays.",
    "Sand is made of tiny bits of rock and shell.",
    "Museums display art and objects from the past.",
    "A kettle is used to boil water.",
]

# --------------------------------------------------------------------------
# Facts: each fact is one underlying question with several phrasings, one
# correct answer sentence and a few wrong answer sentences.
# --------------------------------------------------------------------------


def _fact(topic, key, prompts, correct, wrongs, explain=None):
    return {"topic": topic, "key": key, "prompts": prompts, "correct": correct,
            "wrongs": wrongs, "explain": explain}


def arithmetic_facts():
    facts = []
    ops = [("plus", "+", lambda a, b: a + b), ("minus", "-", lambda a, b: a - b),
           ("times", "*", lambda a, b: a * b)]
    for word, sym, fn in ops:
        for a in range(0, 21):
            for b in range(0, 21):
                if word == "minus" and b > a:
                    continue
                c = fn(a, b)
                prompts = [
                    f"What is {a} {word} {b}?",
                    f"Can you tell me what {a} {word} {b} is?",
                    f"Please work out {a} {sym} {b}.",
                    f"How much is {a} {word} {b}?",
                    f"Quick maths question: what is {a} {sym} {b}?",
                ]
                wrong_values = [c + d for d in (-3, -2, -1, 1, 2, 3, 10) if c + d >= 0]
                if word == "plus":
                    explain = f"If you start at {a} and count up {b}, you reach {c}."
                elif word == "minus":
                    explain = f"Taking {b} away from {a} leaves {c}."
                else:
                    explain = f"That is {b} groups of {a}, which makes {c}."
                facts.append(_fact(
                    "arithmetic", f"{a}{sym}{b}", prompts, f"{a} {word} {b} is {c}.",
                    [f"{a} {word} {b} is {w}." for w in wrong_values], explain))
    return facts


def capital_facts():
    facts = []
    cities = [city for _, city in CAPITALS]
    for country, city in CAPITALS:
        prompts = [
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Do you know the capital city of {country}?",
            f"Tell me the capital of {country}.",
            f"What city is {country}'s capital?",
        ]
        wrongs = [f"The capital of {country} is {c}." for c in cities if c != city]
        facts.append(_fact("capitals", country, prompts, f"The capital of {country} is {city}.",
                           wrongs, f"{city} is also one of the largest cities in {country}."
                           if country not in ("Canada", "Australia", "Brazil", "Turkey",
                                              "Switzerland", "Nigeria", "Morocco",
                                              "New Zealand")
                           else f"Many people guess a bigger city, but it is {city}."))
    return facts


def colour_facts():
    facts = []
    for thing, colour in COLOURS:
        prompts = [
            f"What colour is {thing}?",
            f"What is the colour of {thing}?",
            f"Can you tell me the colour of {thing}?",
            f"Which colour is {thing} usually?",
        ]
        wrongs = [f"{thing.capitalize()} is {c}." for c in COLOUR_WORDS if c not in colour]
        facts.append(_fact("colours", thing, prompts, f"{thing.capitalize()} is usually {colour}.",
                           wrongs, None))
    return facts


def animal_facts():
    facts = []
    sounds = [s for _, s in ANIMAL_SOUNDS]
    for animal, sound in ANIMAL_SOUNDS:
        prompts = [
            f"What sound does a {animal} make?",
            f"What noise does a {animal} make?",
            f"How does a {animal} sound?",
            f"Which sound is made by a {animal}?",
        ]
        wrongs = [f"A {animal} {s}." for s in sounds if s != sound]
        facts.append(_fact("animals", f"sound-{animal}", prompts, f"A {animal} {sound}.", wrongs,
                           None))
    for animal, legs in ANIMAL_LEGS:
        prompts = [
            f"How many legs does a {animal} have?",
            f"Can you tell me how many legs a {animal} has?",
            f"What is the number of legs on a {animal}?",
            f"Count the legs of a {animal} for me.",
        ]
        wrongs = [f"A {animal} has {n} legs." for n in (0, 2, 4, 6, 8, 10, 12) if n != legs]
        facts.append(_fact("animals", f"legs-{animal}", prompts, f"A {animal} has {legs} legs.",
                           wrongs, None))
    babies = sorted({b for _, b in BABY_ANIMALS})
    for animal, baby in BABY_ANIMALS:
        prompts = [
            f"What is a baby {animal} called?",
            f"What do you call a young {animal}?",
            f"What is the name for a baby {animal}?",
        ]
        wrongs = [f"A baby {animal} is called a {b}." for b in babies if b != baby]
        facts.append(_fact("animals", f"baby-{animal}", prompts,
                           f"A baby {animal} is called a {baby}.", wrongs, None))
    return facts


def word_facts():
    facts = []
    all_words = sorted({w for pair in OPPOSITES for w in pair})
    for word, opposite in OPPOSITES:
        prompts = [
            f"What is the opposite of {word}?",
            f"What word means the opposite of {word}?",
            f"Give me the opposite of {word}.",
            f"What is the antonym of {word}?",
        ]
        wrongs = [f"The opposite of {word} is {w}." for w in all_words
                  if w not in (word, opposite)]
        facts.append(_fact("words", f"opp-{word}", prompts,
                           f"The opposite of {word} is {opposite}.", wrongs, None))
    plurals = [p for _, p in PLURALS]
    for word, plural in PLURALS:
        prompts = [
            f"What is the plural of {word}?",
            f"How do you say more than one {word}?",
            f"What is the plural form of the word {word}?",
        ]
        wrongs = [f"The plural of {word} is {word}s."] if plural != word + "s" else []
        wrongs += [f"The plural of {word} is {p}." for p in plurals if p != plural][:6]
        facts.append(_fact("words", f"plural-{word}", prompts,
                           f"The plural of {word} is {plural}.", wrongs, None))
    for seq_name, seq in (("day", DAYS), ("month", MONTHS)):
        for i, item in enumerate(seq):
            nxt = seq[(i + 1) % len(seq)]
            prompts = [
                f"Which {seq_name} comes after {item}?",
                f"What {seq_name} follows {item}?",
                f"What is the next {seq_name} after {item}?",
            ]
            wrongs = [f"The {seq_name} after {item} is {x}." for x in seq if x not in (item, nxt)]
            facts.append(_fact("words", f"next-{item}", prompts,
                               f"The {seq_name} after {item} is {nxt}.", wrongs, None))
    for n in range(0, 11):
        prompts = [
            f"How do you write the number {n} in words?",
            f"How is {n} spelled as a word?",
        ]
        wrongs = [f"{n} is written as {w}." for w in NUMBER_WORDS if w != NUMBER_WORDS[n]]
        facts.append(_fact("words", f"spell-{n}", prompts,
                           f"{n} is written as {NUMBER_WORDS[n]}.", wrongs, None))
    return facts


TOPIC_WEIGHTS = {"arithmetic": 0.4, "capitals": 0.15, "colours": 0.12, "animals": 0.18,
                 "words": 0.15}


def split_prompts(rng):
    """Split facts per topic into train/eval; return {split: {topic: [prompt items]}}."""
    by_topic = {}
    for fact in arithmetic_facts() + capital_facts() + colour_facts() + animal_facts() + word_facts():
        by_topic.setdefault(fact["topic"], []).append(fact)
    splits = {"train": {}, "eval": {}}
    for topic in sorted(by_topic):
        facts = by_topic[topic]
        rng.shuffle(facts)
        n_eval = max(2, round(len(facts) * EVAL_FACT_FRACTION))
        for split, part in (("eval", facts[:n_eval]), ("train", facts[n_eval:])):
            items = [(fact, prompt) for fact in part for prompt in fact["prompts"]]
            rng.shuffle(items)
            splits[split][topic] = items
    return splits


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------


def filler_count(rng):
    """Long-tailed count: P(n >= k) = (k + 1) ** -1.3, capped at MAX_FILLERS."""
    return min(MAX_FILLERS, int(rng.paretovariate(1.3)) - 1)


def pick_markers(rng, openers, closers, p_open, p_close):
    opener = rng.choice(openers) if rng.random() < p_open else None
    closer = rng.choice(closers) if rng.random() < p_close else None
    if opener is None and closer is None:
        if rng.random() < 0.5:
            opener = rng.choice(openers)
        else:
            closer = rng.choice(closers)
    return opener, closer


# What tells the chosen response from the rejected one, per pair: three kinds, from what a
# tiny model learns in a few steps to what takes it the whole run, so held-out accuracy
# rises over the quickstart instead of saturating at once.
#   rude       the rejected answer is dismissive (rude markers): learned within ~25 steps
#   unhelpful  the rejected answer is polite but refuses or drifts off topic
#   off_target the rejected answer is polite and correct, but answers another question of
#              the same topic (the capital of Chile for a question about Peru): only a model
#              that matches the answer to the question tells it apart
PAIR_KINDS = {"rude": 0.15, "unhelpful": 0.1, "judgement": 0.75}
# "judgement": both answers are polite and on topic and end with the same kind of remark;
# only its adjective differs, one of many warm or cold words, each met a few times per
# epoch: the model learns them word by word.
WARM_WORDS = [
    "fascinating", "delightful", "wonderful", "charming", "lovely", "inspiring", "pleasant",
    "marvellous", "splendid", "brilliant", "enjoyable", "uplifting", "cheerful", "rewarding",
    "refreshing", "elegant", "graceful", "gentle", "thoughtful", "clever", "curious", "vivid",
    "joyful", "heartwarming", "admirable", "remarkable", "beautiful", "soothing", "exciting",
    "magical", "glorious", "fabulous", "terrific", "superb", "radiant", "sunny", "precious",
    "sweet", "friendly", "kind", "generous", "hopeful", "bright", "calm", "fresh", "neat",
    "lively", "playful", "warm", "wise", "noble", "gracious", "tidy", "cosy", "happy",
    "merry", "sparkling", "dazzling", "stunning", "graceful", "excellent", "amazing",
    "fantastic", "gorgeous", "peaceful", "serene", "tender", "loyal", "honest", "brave",
    "bold", "nimble", "fine", "grand", "handsome", "pretty", "jolly", "witty", "smart",
]
COLD_WORDS = [
    "tedious", "dreary", "pointless", "irritating", "dull", "boring", "annoying", "awful",
    "dreadful", "miserable", "gloomy", "bleak", "grim", "tiresome", "useless", "silly",
    "ugly", "nasty", "stale", "sour", "bitter", "harsh", "clumsy", "messy", "lazy", "petty",
    "shallow", "bland", "drab", "murky", "hollow", "wretched", "lousy", "shabby", "sloppy",
    "grumpy", "sullen", "cranky", "rotten", "foul", "vile", "crude", "gross", "lame", "weary",
    "sad", "cruel", "mean", "rude", "cold", "stiff", "noisy", "filthy", "greasy", "soggy",
    "rusty", "dusty", "moody", "gloomy", "spiteful", "hateful", "horrid", "ghastly",
    "sinister", "sickly", "feeble", "frail", "drowsy", "sluggish", "stubborn", "reckless",
    "careless", "pathetic", "hopeless", "worthless", "dismal", "sorry", "tacky", "smelly",
    "sticky", "tangled", "broken", "crooked", "faulty", "flawed", "muddy", "poor", "bad",
]
REMARKS = [
    "I find this topic {}.", "Questions like this are {}.", "Honestly, this subject is {}.",
    "To me this is a {} thing to learn.", "Learning this feels {}.",
]
POLITE_REFUSALS = [
    "I am sorry, but I would rather not answer that one.",
    "Thank you for asking, but I cannot help with that today.",
    "That is a lovely question, but I will have to pass on it.",
    "I appreciate the question, but I am not able to answer it.",
]
POLITE_OFF_TOPIC = [
    "Thank you! By the way, I have been reading a lovely book about gardens.",
    "Happy to chat! Have you ever tried baking bread at home?",
    "What a nice day it is. I was just thinking about a walk in the park.",
    "Thanks for asking. Did you know that some birds fly south for the winter?",
]


def chosen_parts(rng, fact, kind):
    p_open, p_close = (0.85, 0.6) if kind == "rude" else (0.5, 0.3)
    opener, closer = pick_markers(rng, POLITE_OPENERS, POLITE_CLOSERS, p_open, p_close)
    body = [fact["correct"]]
    if kind == "judgement":
        body.append(rng.choice(REMARKS).format(rng.choice(WARM_WORDS)))
    elif fact["explain"] and rng.random() < 0.4:
        body.append(fact["explain"])
    return opener, body, closer


def rejected_parts(rng, fact, kind, others):
    if kind == "rude":
        opener, closer = pick_markers(rng, RUDE_OPENERS, RUDE_CLOSERS, 0.85, 0.6)
        body = [rng.choice(fact["wrongs"] + [fact["correct"]] + OFF_TOPIC + REFUSALS)]
        return opener, body, closer
    # the same politeness as a chosen answer of these kinds: tone tells nothing here
    opener, closer = pick_markers(rng, POLITE_OPENERS, POLITE_CLOSERS, 0.5, 0.3)
    if kind == "unhelpful":
        return opener, [rng.choice(POLITE_REFUSALS + POLITE_OFF_TOPIC)], closer
    return opener, [fact["correct"], rng.choice(REMARKS).format(rng.choice(COLD_WORDS))], closer


def render(opener, body, fillers, closer):
    parts = ([opener] if opener else []) + body + fillers + ([closer] if closer else [])
    return " ".join(parts)


def make_response_pair(rng, fact, chosen_longer, others):
    """Build (chosen, rejected) texts; the chosen one is longer iff chosen_longer. ``others``
    are the facts of the same topic and split (what an off-target answer answers)."""
    kind = rng.choices(sorted(PAIR_KINDS), weights=[PAIR_KINDS[k] for k in sorted(PAIR_KINDS)])[0]
    c_open, c_body, c_close = chosen_parts(rng, fact, kind)
    r_open, r_body, r_close = rejected_parts(rng, fact, kind, others)
    n_a, n_b = filler_count(rng), filler_count(rng)
    n_long, n_short = max(n_a, n_b), min(n_a, n_b)
    long_fill = [rng.choice(FILLERS) for _ in range(n_long)]
    short_fill = [rng.choice(FILLERS) for _ in range(n_short)]
    c_fill, r_fill = (long_fill, short_fill) if chosen_longer else (short_fill, long_fill)
    while True:
        chosen = render(c_open, c_body, c_fill, c_close)
        rejected = render(r_open, r_body, r_fill, r_close)
        longer, shorter = (chosen, rejected) if chosen_longer else (rejected, chosen)
        if len(longer) >= len(shorter) + LENGTH_MARGIN:
            break
        (c_fill if chosen_longer else r_fill).append(rng.choice(FILLERS))
    assert chosen != rejected
    return chosen, rejected


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


def draw_prompt(rng, pool):
    """Draw an unused (fact, prompt) from a topic picked by TOPIC_WEIGHTS."""
    topics = [t for t in sorted(pool) if pool[t]]
    weights = [TOPIC_WEIGHTS[t] for t in topics]
    topic = rng.choices(topics, weights=weights)[0]
    return pool[topic].pop()


def polite_answer(rng, fact):
    opener = rng.choice(POLITE_OPENERS) if rng.random() < 0.5 else None
    return " ".join(([opener] if opener else []) + [fact["correct"]])


def make_rows(rng, pool, n):
    # Context turns (first question of a multi-turn row) may reuse prompts of
    # the same split; final prompts are unique within a split.
    context_items = [item for topic in sorted(pool) for item in pool[topic]]
    facts_by_topic = {
        topic: list({fact["key"]: fact for fact, _ in pool[topic]}.values()) for topic in sorted(pool)
    }
    pool = {topic: list(items) for topic, items in pool.items()}
    flags = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(flags)
    rows = []
    for chosen_longer in flags:
        fact, prompt = draw_prompt(rng, pool)
        context = []
        if rng.random() < SYSTEM_PROB:
            context.append({"from": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < MULTI_TURN_PROB:
            first_fact, first_prompt = rng.choice(context_items)
            context.append({"from": "user", "content": first_prompt})
            context.append({"from": "assistant", "content": polite_answer(rng, first_fact)})
        context.append({"from": "user", "content": prompt})
        chosen, rejected = make_response_pair(rng, fact, chosen_longer, facts_by_topic[fact["topic"]])
        rows.append({
            "context": context,
            "chosen": [{"from": "assistant", "content": chosen}],
            "rejected": [{"from": "assistant", "content": rejected}],
        })
    return rows


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------
# Tokenizer and model config
# --------------------------------------------------------------------------


def corpus_lines(rows):
    """All message texts of the generated rows (the BPE training corpus)."""
    lines = []
    for row in rows:
        for key in ("context", "chosen", "rejected"):
            lines.extend(m["content"] for m in row[key])
    return lines


def build_tokenizer(lines):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s>:1 $B:1",
        special_tokens=[("<s>", bos_id)],
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def save_tokenizer(tok, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(out_dir))
    # save_pretrained records the base class name; name the fast class
    # explicitly so AutoTokenizer resolves it without guessing.
    config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    # Only the three files the quickstart ships.
    for name in sorted(os.listdir(out_dir)):
        if name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            os.remove(out_dir / name)
    return hf_tok


def save_model_config(hf_tok, out_dir):
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        attention_bias=False,
        mlp_bias=False,
        use_cache=True,
        torch_dtype="float32",
        num_labels=1,  # scalar reward head for AutoModelForSequenceClassification
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    return config


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def conversation_lengths(hf_tok, rows, side):
    lengths = []
    for row in rows:
        messages = [{"role": m["from"], "content": m["content"]} for m in row["context"] + row[side]]
        text = hf_tok.apply_chat_template(messages, tokenize=False)
        lengths.append(len(hf_tok(text)["input_ids"]))
    return lengths


def main():
    rng = random.Random(SEED)
    splits = split_prompts(rng)
    train_rows = make_rows(random.Random(SEED + 1), splits["train"], N_TRAIN)
    eval_rows = make_rows(random.Random(SEED + 2), splits["eval"], N_EVAL)

    train_prompts = {row["context"][-1]["content"] for row in train_rows}
    eval_prompts = {row["context"][-1]["content"] for row in eval_rows}
    assert not train_prompts & eval_prompts
    assert len(train_prompts) == N_TRAIN and len(eval_prompts) == N_EVAL

    write_jsonl(DATA_DIR / "quickstart_train.jsonl", train_rows)
    write_jsonl(DATA_DIR / "quickstart_eval.jsonl", eval_rows)

    tok = build_tokenizer(corpus_lines(train_rows + eval_rows))
    hf_tok = save_tokenizer(tok, TOKENIZER_DIR)
    save_model_config(hf_tok, MODEL_DIR)

    # Sanity checks against the saved files.
    from transformers import AutoTokenizer  # local import: only needed here

    reloaded = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert reloaded.pad_token_id != reloaded.eos_token_id
    for side in ("chosen", "rejected"):
        lengths = conversation_lengths(reloaded, train_rows + eval_rows, side)
        assert max(lengths) < MAX_CONV_TOKENS, (side, max(lengths))
    print(f"wrote {len(train_rows)} train / {len(eval_rows)} eval rows, "
          f"vocab size {len(reloaded)}")


if __name__ == "__main__":
    main()
