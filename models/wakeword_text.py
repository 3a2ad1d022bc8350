"""What people say around a wake word: confusable words in running sentences, fillers, commands.

Generated for any phrase (nothing here is specific to "hey jarvis"):
- :func:`confusable_words`: the phrase's words with their onsets swapped (rhymes: "jarvis" -> "carvis",
  "hey" -> "day"), its syllables alone ("jar", "vis"), the near-miss phrases of the trainer, and the common
  English words of :data:`LEXICON` that sound most like the phrase's words (edit distance between espeak-ng
  IPA strings);
- :func:`confusable_sentences`: those words *inside* everyday sentences (templates with a slot), because a head
  that rejects "travis" said alone may still fire on "I asked travis about it" spoken in one breath;
- :func:`positive_texts`: the phrase as users say it: alone, after a filler ("um, hey jarvis"), followed by a
  command without a pause.

Training and evaluation draw from disjoint lists (``TRAIN_*`` / ``EVAL_*``): no template, filler or command
is shared, so no evaluation sentence is a training sentence (``tests/unit/test_wakeword_data.py`` proves it).
No generated text contains the phrase's words in sequence.
"""

from __future__ import annotations

import functools
import random
import re
import subprocess

ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z", "ch", "sh",
          "th", "st", "tr", "gr", "br", "pl", "sp", ""]

# Common English words of many sound shapes; the closest to a phrase's words become its confusables.
LEXICON = (
    "service nervous harvest marvel marvelous carcass travis davis jars jarring garbage artist office purpose notice "
    "practice jealous chorus circus famous bonus focus basis crisis thesis jersey charcoal garvey harness hardness "
    "darkness argus carcass parties party barbie starving carving curious various service's surface surplus service "
    "purchase perches marvin martin marcus mavis elvis avis jarred guard charge large margin garden pardon harvard "
    "army arches archive varnish tarnish lavish ravish javelin java jacket jargon jasmine jazz jarvie jervis "
    "chavis navis parvis harris paris peris morris boris doris iris ellis willis phyllis dennis tennis menace "
    "atlas canvas kansas texas lettuce justice cactus status campus census chassis access abyss address "
    "hey hay hail they say day may way grey pay play stay okay away today obey convey hurray "
    "heavy heaven hello halo holiday haystack daybreak heyday fairway railway highway anyway someday "
    "a the of and in is it to you he was for on are with as his they be at one have this from or had by word "
    "hot but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little only round man year "
    "came show every good me give our under name very through just form sentence great think help low line "
    "differ turn cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world near build "
    "self earth father head stand own page should country found answer school grow study still learn plant "
    "cover food sun four between state keep eye never last let thought city tree cross farm hard start might "
    "story saw far sea draw left late run while press close night real life few north open seem together "
    "next white children begin got walk example ease paper group always music those both mark often letter "
    "until mile river car feet care second book carry took science eat room friend began idea fish mountain "
    "stop once base hear horse cut sure watch colour face wood main enough plain girl usual young ready above "
    "ever red list though feel talk bird soon body dog family direct pose leave song measure door product "
    "black short numeral class wind question happen complete ship area half rock order fire south problem "
    "piece told knew pass since top whole king space heard best hour better during hundred five remember step "
    "early hold west ground interest reach fast verb sing listen six table travel less morning ten simple "
    "several vowel toward war lay against pattern slow centre love person money serve appear road map rain "
    "rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait "
    "plan figure star box noun field rest correct able pound done beauty drive stood contain front teach week "
    "final gave green oh quick develop ocean warm free minute strong special mind behind clear tail produce "
    "fact street inch multiply nothing course stay wheel full force blue object decide surface deep moon island "
    "foot system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran "
    "check game shape equate miss brought heat snow tire bring yes distant fill east paint language among"
).split()

TRAIN_FILLERS = ["um", "uh", "okay", "so", "well", "oh", "hmm, right"]
EVAL_FILLERS = ["er", "alright", "now", "ah", "yeah so", "excuse me"]
TRAIN_COMMANDS = ["turn on the lights", "what time is it", "play some music", "set a timer for ten minutes",
                  "what's the weather like today", "stop", "turn it up", "call my sister", "lock the front door",
                  "add milk to the shopping list", "how tall is mount everest", "dim the bedroom lights",
                  "skip this song", "remind me at six", "open the garage"]
EVAL_COMMANDS = ["turn off the kitchen lamp", "what's on my calendar", "pause", "volume down",
                 "start the vacuum", "how far is the moon", "tell me a joke", "set an alarm for seven thirty",
                 "close the blinds", "is it going to rain"]
TRAIN_TEMPLATES = [
    "I left the {w} in the car this morning", "did you see what {w} said about the game", "they told me {w} would call",
    "we drove past the {w} on the way home", "my brother wants a {w} for his birthday", "the {w} was closed again",
    "can you believe the {w} is already here", "she asked about the {w} twice", "put the {w} next to the window",
    "nobody knew where the {w} went", "I think {w} is a strange word", "we talked about {w} for an hour",
    "he said {w} and then laughed", "the kids were playing {w} outside", "there is a {w} behind the house",
    "after lunch the {w} started", "so I said {w} and walked away", "it looked like a {w} to me",
    "the new {w} costs too much", "wait, was that {w} or something else", "we need more {w} for the weekend",
    "you know the {w} near the school", "my neighbour has a {w} in his garden", "the {w} made everyone nervous",
    "honestly the {w} was better last year", "and then the {w} showed up late",
]
EVAL_TEMPLATES = [
    "I bought a {w} at the market yesterday", "is the {w} still open on sundays", "her friend {w} lives in town",
    "the teacher explained the {w} very slowly", "look at that {w} over there", "we forgot the {w} at the hotel",
    "my dad keeps talking about the {w}", "the {w} on television was boring", "why would anyone want a {w}",
    "tomorrow the {w} comes back", "that {w} sounds really good", "they found an old {w} in the attic",
    "please bring the {w} when you come", "I dreamed about a {w} last night", "the whole {w} was a mess",
    "call me when the {w} arrives", "you said {w} earlier, right",
]


def _contains_phrase(text: str, words: list[str]) -> bool:
    toks = re.findall(r"[a-z']+", text.lower())
    n = len(words)
    return any(toks[i:i + n] == words for i in range(len(toks) - n + 1))


def _split_onset(word: str) -> tuple[str, str]:
    m = re.match(r"^([^aeiouy]*)(.*)$", word)
    return (m.group(1), m.group(2)) if m else ("", word)


def rhymes(word: str) -> list[str]:
    """``word`` with each other onset: "jarvis" -> "barvis", "carvis", ..., "arvis"."""
    onset, rest = _split_onset(word)
    if not rest:
        return []
    return sorted({o + rest for o in ONSETS if o != onset and len(o + rest) > 1})


def syllables(word: str) -> list[str]:
    """Rough written syllables of ``word`` ("jarvis" -> ["jar", "vis"]) and its first two letters' syllable."""
    parts = re.findall(r"[^aeiouy]*[aeiouy]+(?:[^aeiouy]+(?=[^aeiouy][aeiouy])|[^aeiouy]*$)?", word)
    parts = [p for p in parts if p]
    return sorted({p for p in parts if len(p) > 1 and p != word})


def _ipa_one(word: str) -> str:
    out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", "en-us", word], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return re.sub(r"[ˈˌ\s]", "", out) or word


@functools.lru_cache(maxsize=None)
def _ipa(words: tuple[str, ...]) -> tuple[str, ...]:
    """espeak-ng's IPA for each word (stress marks and spaces dropped), one process per word, 8 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        return tuple(pool.map(_ipa_one, words))


def _distance(a: str, b: str) -> float:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] / max(len(a), len(b), 1)


def similar_words(word: str, count: int = 12) -> list[str]:
    """The ``count`` words of :data:`LEXICON` whose IPA is closest to ``word``'s (never ``word`` itself)."""
    lex = tuple(sorted({w for w in LEXICON if w != word}))
    target = _ipa((word,))[0]
    ipas = _ipa(lex)
    ranked = sorted(zip(lex, ipas), key=lambda p: (_distance(target, p[1]), p[0]))
    return [w for w, _ in ranked[:count]]


def confusable_words(phrase: str) -> list[str]:
    """Words and short phrases that share sounds with ``phrase`` but are not it (sorted, no duplicates)."""
    from .wakeword_train import near_phrases

    words = phrase.lower().split()
    out = set(near_phrases(phrase))
    for i, w in enumerate(words):
        for r in rhymes(w)[::2]:                          # every other onset: enough variety, fewer near-copies
            out.add(" ".join(words[:i] + [r] + words[i + 1:]) if len(words) > 1 and i == len(words) - 1 else r)
        out.update(syllables(w))
        out.update(similar_words(w))
    return sorted(c for c in out if c and not _contains_phrase(c, words))


def confusable_sentences(rng: random.Random, phrase: str, n: int, split: str = "train") -> list[str]:
    """``n`` everyday sentences, each with a confusable of ``phrase`` in the middle (``split``'s templates)."""
    templates = TRAIN_TEMPLATES if split == "train" else EVAL_TEMPLATES
    words = confusable_words(phrase)
    phrase_words = phrase.lower().split()
    out = []
    while len(out) < n:
        text = rng.choice(templates).format(w=rng.choice(words))
        if not _contains_phrase(text, phrase_words):
            out.append(text)
    return out


def positive_texts(rng: random.Random, phrase: str, split: str = "train") -> tuple[str, str, str]:
    """(before, phrase, after) as a user says it: a filler before (a quarter of the time), a command
    after (half of the time); empty strings where there is none."""
    fillers = TRAIN_FILLERS if split == "train" else EVAL_FILLERS
    commands = TRAIN_COMMANDS if split == "train" else EVAL_COMMANDS
    before = rng.choice(fillers) if rng.random() < 0.25 else ""
    after = rng.choice(commands) if rng.random() < 0.5 else ""
    return before, phrase, after
