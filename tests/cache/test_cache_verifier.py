"""The hit verifier on hand-written look-alike traps (none of them from the
benchmark's data set) and on harmless variations it must let through."""

from __future__ import annotations

import pytest

from prism.cache.verifier import Verifier, entities, stem, tokens

V = Verifier()

TRAPS = {
    "negation": [
        ("Can I pause my membership?", "Can I not pause my membership?"),
        ("Should I water the lawn today?", "Shouldn't I water the lawn today?"),
        ("Is the gym membership refundable?", "Is the gym membership non-refundable?"),
        ("How do I enable notifications?", "How do I disable notifications?"),
        ("Which plans include phone support?", "Which plans exclude phone support?"),
        ("How do I increase my credit limit?", "How do I lower my credit limit?"),
        ("Is this toy suitable for toddlers?", "Is this toy unsuitable for toddlers?"),
        ("How do I upload my photos?", "How do I download my photos?"),
    ],
    "entity": [
        ("How do I get to Leeds station?", "How do I get to York station?"),
        ("What is Acme's refund policy?", "What is Globex's refund policy?"),
        ("Does the Pixel 8 support eSIM?", "Does the iPhone 15 support eSIM?"),
        ("How do I contact Barclays about fraud?", "How do I contact Monzo about fraud?"),
    ],
    "number_date": [
        ("Is there a train at 6pm?", "Is there a train at 8pm?"),
        ("Can I book a table for four?", "Can I book a table for six?"),
        ("What was the exchange rate on 3 May?", "What was the exchange rate on 13 May?"),
        ("Are you open on Monday?", "Are you open on Tuesday?"),
        ("What is 20% of 150?", "What is 25% of 150?"),
        ("Is the museum free in July?", "Is the museum free in December?"),
        ("Can I return it within 30 days?", "Can I return it within 90 days?"),
    ],
    "unit": [
        ("How many calories in 100g of rice?", "How many calories in 100kg of rice?"),
        ("Is a 5mb upload limit enough?", "Is a 5gb upload limit enough?"),
        ("Can I carry 2 litres of water?", "Can I carry 2 gallons of water?"),
    ],
    "direction": [
        (
            "How do I move money from savings to my current account?",
            "How do I move money from my current account to savings?",
        ),
        ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
        (
            "Can I transfer my number from Vodafone to EE?",
            "Can I transfer my number from EE to Vodafone?",
        ),
        ("Translate this from English to French", "Translate this from French to English"),
    ],
    "qualifier": [
        ("How do I renew my passport?", "How do I renew my child's passport?"),
        ("What does the basic plan cost?", "What does the premium plan cost?"),
    ],
}

SAME = [
    ("How do I reset my password?", "how do i reset my password"),
    ("How do I reset my password?", "Hi, how do I reset my password please?"),
    ("What is the refund policy?", "What's the refund policy?"),
    ("Where is the nearest pharmacy?", "Where's the nearest pharmacy?"),
    ("How do I change my delivery address?", "How do I update my delivery address?"),
    ("Do you ship to Canada?", "do you ship to canada"),
    ("Do you ship to Canada?", "DO YOU SHIP TO CANADA?"),
    ("How long does shipping take?", "um how long does shipping take, thanks"),
    ("How do I cancel my order?", "How do I cancle my order?"),
    ("Can I get a refund for a damaged item?", "For a damaged item, can I get a refund?"),
    ("What time does the store open on Saturday?", "What time does the shop open on Saturday?"),
    ("Do you have a table for 2 at 7pm?", "Do you have a table for two at 7pm?"),
    ("How do I send £50 to a friend?", "How do I send fifty pounds to a friend?"),
]


@pytest.mark.parametrize(
    ("cached", "query"), [p for pairs in TRAPS.values() for p in pairs], ids=lambda s: s[:30]
)
def test_traps_are_refused(cached: str, query: str) -> None:
    v = V.check(cached, query)
    assert not v.ok, v.reason
    assert v.reason
    # Symmetric: the trap is refused whichever question was cached.
    assert not V.check(query, cached).ok


@pytest.mark.parametrize(("cached", "query"), SAME, ids=lambda s: s[:30])
def test_harmless_variations_pass(cached: str, query: str) -> None:
    v = V.check(cached, query)
    assert v.ok, v.reason


def test_reworded_questions_are_left_to_the_threshold() -> None:
    v = V.check("How do I upgrade my plan?", "How can I move to a higher tier?")
    assert v.ok and "reworded" in v.reason and v.kind == "reworded"


def test_reasons_name_what_differs() -> None:
    assert "numbers" in V.check("table for 4", "table for 5").reason
    assert "negated" in V.check("Can I smoke here?", "Can I not smoke here?").reason
    assert "leeds" in V.check("Trains to Leeds?", "Trains to York?").reason


def test_helpers() -> None:
    assert tokens("What's Austria's capital? Don't know") == [
        "what",
        "austria",
        "capital",
        "don't",
        "know",
    ]
    assert stem("refunds") == stem("refund") and stem("waiting") == stem("wait")
    assert entities("Do you accept Apple Pay in the UK?") == ["apple", "pay", "uk"]
    assert entities("London is big") == []  # sentence-initial: not a name by case alone


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("Which fees have increased this year?", "Which fees have decreased this year?"),
        ("Do full-time staff get a bonus?", "Do part-time staff get a bonus?"),
        ("Can I return it within 14 days?", "Can I return it within three weeks?"),
        ("Are you open on Mondays?", "Are you open on Tuesdays?"),
        ("Is it free for members?", "Is it free for non-members?"),
    ],
    ids=lambda s: s[:30],
)
def test_more_traps_the_rules_refuse(cached: str, query: str) -> None:
    v = V.check(cached, query)
    assert not v.ok and v.kind == "veto", v


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("Can I return it within 14 days?", "Can I return it within two weeks?"),
        ("Is a 2-year fixed rate available?", "Is a two-year fixed rate available?"),
        ("How many calories are in one egg?", "How many calories are in an egg?"),
        ("Do you deliver on weekends?", "Do you deliver at the weekend?"),
        ("What time do you open on Mondays?", "What time do you open on Mondys?"),
        (
            "Move £50 from savings into my current account",
            "Move £50 from savings to my current account",
        ),
        ("What's the price for non-members?", "How much is it if I'm not a member?"),
        ("How do I request a refund?", "How do I reqest a refund?"),
        ("Is the restaurant dog-friendly?", "Are dogs welcome in the restaurant?"),
    ],
    ids=lambda s: s[:30],
)
def test_variations_the_rules_no_longer_veto(cached: str, query: str) -> None:
    assert V.check(cached, query).kind != "veto", V.check(cached, query)


def test_kinds() -> None:
    assert V.check("How do I reset my password?", "How can I reset my password?").kind == "same"
    assert V.check("Is the chicken dish gluten-free?", "Is the beef dish gluten-free?").kind == (
        "edit"
    )
    assert V.check("Table for 4", "Table for 5").kind == "veto"
