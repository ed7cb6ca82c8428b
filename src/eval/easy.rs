//! A generated pool of easy short-answer questions: the kind a small chat model answers
//! right, so that training on "are you sure?" dialogues can teach it to keep answers it
//! knows (a model near chance on a question cannot know whether its first answer was right).
//!
//! Ten families (addition, multiplication, capitals, languages, continents, opposites,
//! plurals, next numbers, counts, everyday facts),
//! each item asked in one of several phrasings chosen by a seeded hash of its id. Answers
//! are computed (arithmetic) or come from the tables below; several spellings are accepted.
//! Families SmolLM2-135M-Instruct answered right under 40% of the time (the day after a
//! weekday 0%, names of young animals 7%, animal sounds 13%, colours of things 14%,
//! subtraction 31%, the month after a month 33%: see docs/spt-recipe.md) are left out:
//! they are not easy for the default model, and the pool as a whole should be of the kind
//! it answers right at least 60% of the time.
//! Ids are `family:key` and do not depend on the seed or the phrasing, so splits by id
//! never put the same item in training and evaluation in two wordings.

use super::datasets::{Gold, Question};
use std::sync::OnceLock;

/// One item: its id, its phrasings (one is asked) and its accepted answers.
struct Item {
    id: String,
    phrasings: Vec<String>,
    answers: Vec<String>,
}

const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "twenty-one",
    "twenty-two",
    "twenty-three",
    "twenty-four",
    "twenty-five",
    "twenty-six",
    "twenty-seven",
    "twenty-eight",
    "twenty-nine",
    "thirty",
    "thirty-one",
];

/// "12" and "twelve" (digits first: the model's usual spelling).
fn number(n: i64) -> Vec<String> {
    let mut v = vec![n.to_string()];
    if let Some(w) = usize::try_from(n).ok().and_then(|i| NUMBER_WORDS.get(i)) {
        v.push(w.to_string());
    }
    v
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Items of one table family: `templates` hold `{}` for the table's subject.
fn table(family: &str, templates: &[&str], rows: &[(&str, &[&str])], out: &mut Vec<Item>) {
    for (subject, answers) in rows {
        out.push(Item {
            id: format!("{family}:{subject}"),
            phrasings: templates.iter().map(|t| t.replace("{}", subject)).collect(),
            answers: strings(answers),
        });
    }
}

const CAPITALS: &[(&str, &[&str])] = &[
    ("France", &["Paris"]),
    ("Germany", &["Berlin"]),
    ("Italy", &["Rome"]),
    ("Spain", &["Madrid"]),
    ("Japan", &["Tokyo"]),
    ("China", &["Beijing", "Peking"]),
    ("Russia", &["Moscow"]),
    ("the United Kingdom", &["London"]),
    ("England", &["London"]),
    ("Egypt", &["Cairo"]),
    ("Canada", &["Ottawa"]),
    ("Greece", &["Athens"]),
    ("Portugal", &["Lisbon"]),
    ("Ireland", &["Dublin"]),
    ("Austria", &["Vienna"]),
    ("Norway", &["Oslo"]),
    ("Sweden", &["Stockholm"]),
    ("Poland", &["Warsaw"]),
    ("the United States", &["Washington"]),
    ("India", &["New Delhi", "Delhi"]),
    ("Mexico", &["Mexico City"]),
    ("Argentina", &["Buenos Aires"]),
    ("South Korea", &["Seoul"]),
    ("Thailand", &["Bangkok"]),
    ("Kenya", &["Nairobi"]),
    ("Finland", &["Helsinki"]),
    ("Denmark", &["Copenhagen"]),
    ("Belgium", &["Brussels"]),
    ("the Netherlands", &["Amsterdam"]),
    ("Hungary", &["Budapest"]),
    ("Cuba", &["Havana"]),
    ("Peru", &["Lima"]),
    ("Chile", &["Santiago"]),
    ("Colombia", &["Bogota", "Bogotá"]),
    ("Iran", &["Tehran"]),
    ("Iraq", &["Baghdad"]),
    ("Israel", &["Jerusalem"]),
    ("Lebanon", &["Beirut"]),
    ("Syria", &["Damascus"]),
    ("Saudi Arabia", &["Riyadh"]),
    ("Indonesia", &["Jakarta"]),
    ("the Philippines", &["Manila"]),
    ("Vietnam", &["Hanoi"]),
    ("Czechia", &["Prague"]),
    ("Romania", &["Bucharest"]),
    ("Ukraine", &["Kyiv", "Kiev"]),
    ("Scotland", &["Edinburgh"]),
    ("Wales", &["Cardiff"]),
    ("Iceland", &["Reykjavik", "Reykjavík"]),
    ("Ethiopia", &["Addis Ababa"]),
    ("Nepal", &["Kathmandu"]),
    ("Afghanistan", &["Kabul"]),
    ("Bangladesh", &["Dhaka"]),
    ("Qatar", &["Doha"]),
    ("Jordan", &["Amman"]),
    ("Libya", &["Tripoli"]),
    ("Tunisia", &["Tunis"]),
    ("Algeria", &["Algiers"]),
    ("Uruguay", &["Montevideo"]),
    ("Venezuela", &["Caracas"]),
    ("Bulgaria", &["Sofia"]),
    ("Serbia", &["Belgrade"]),
    ("Croatia", &["Zagreb"]),
    ("Lithuania", &["Vilnius"]),
    ("Latvia", &["Riga"]),
    ("Estonia", &["Tallinn"]),
    ("Malaysia", &["Kuala Lumpur"]),
    ("Taiwan", &["Taipei"]),
    ("North Korea", &["Pyongyang"]),
    ("Ghana", &["Accra"]),
    ("Senegal", &["Dakar"]),
    ("Uganda", &["Kampala"]),
    ("Jamaica", &["Kingston"]),
    ("Ecuador", &["Quito"]),
];

const LANGUAGES: &[(&str, &[&str])] = &[
    ("France", &["French"]),
    ("Spain", &["Spanish"]),
    ("Germany", &["German"]),
    ("Italy", &["Italian"]),
    ("Japan", &["Japanese"]),
    ("China", &["Chinese", "Mandarin"]),
    ("Russia", &["Russian"]),
    ("Portugal", &["Portuguese"]),
    ("Greece", &["Greek"]),
    ("Brazil", &["Portuguese"]),
    ("Mexico", &["Spanish"]),
    ("England", &["English"]),
    ("Poland", &["Polish"]),
    ("Sweden", &["Swedish"]),
    ("the Netherlands", &["Dutch"]),
    ("Turkey", &["Turkish"]),
    ("Argentina", &["Spanish"]),
    ("Korea", &["Korean"]),
    ("Finland", &["Finnish"]),
    ("Norway", &["Norwegian"]),
    ("Denmark", &["Danish"]),
    ("Hungary", &["Hungarian"]),
    ("Czechia", &["Czech"]),
    ("Ukraine", &["Ukrainian"]),
    ("Iran", &["Persian", "Farsi"]),
    ("Thailand", &["Thai"]),
    ("Vietnam", &["Vietnamese"]),
    ("Israel", &["Hebrew"]),
    ("Egypt", &["Arabic"]),
    ("Saudi Arabia", &["Arabic"]),
    ("Colombia", &["Spanish"]),
    ("Peru", &["Spanish"]),
    ("Chile", &["Spanish"]),
    ("Cuba", &["Spanish"]),
    ("Austria", &["German"]),
    ("the United States", &["English"]),
];

const CONTINENTS: &[(&str, &[&str])] = &[
    ("Kenya", &["Africa"]),
    ("Egypt", &["Africa"]),
    ("Nigeria", &["Africa"]),
    ("France", &["Europe"]),
    ("Germany", &["Europe"]),
    ("Spain", &["Europe"]),
    ("Italy", &["Europe"]),
    ("Japan", &["Asia"]),
    ("India", &["Asia"]),
    ("China", &["Asia"]),
    ("Thailand", &["Asia"]),
    ("Brazil", &["South America"]),
    ("Argentina", &["South America"]),
    ("Peru", &["South America"]),
    ("Canada", &["North America"]),
    ("Mexico", &["North America"]),
    ("the United States", &["North America"]),
    ("Ghana", &["Africa"]),
    ("Morocco", &["Africa"]),
    ("Ethiopia", &["Africa"]),
    ("Poland", &["Europe"]),
    ("Greece", &["Europe"]),
    ("Norway", &["Europe"]),
    ("Sweden", &["Europe"]),
    ("Vietnam", &["Asia"]),
    ("Korea", &["Asia"]),
    ("Indonesia", &["Asia"]),
    ("Chile", &["South America"]),
    ("Colombia", &["South America"]),
];

const OPPOSITES: &[(&str, &[&str])] = &[
    ("hot", &["cold"]),
    ("big", &["small", "little"]),
    ("up", &["down"]),
    ("day", &["night"]),
    ("fast", &["slow"]),
    ("happy", &["sad", "unhappy"]),
    ("open", &["closed", "close", "shut"]),
    ("wet", &["dry"]),
    ("light", &["dark", "heavy"]),
    ("old", &["new", "young"]),
    ("tall", &["short"]),
    ("left", &["right"]),
    ("black", &["white"]),
    ("good", &["bad", "evil"]),
    ("early", &["late"]),
    ("full", &["empty"]),
    ("hard", &["soft", "easy"]),
    ("rich", &["poor"]),
    ("win", &["lose"]),
    ("yes", &["no"]),
    ("in", &["out"]),
    ("on", &["off"]),
    ("near", &["far"]),
    ("strong", &["weak"]),
    ("thick", &["thin"]),
    ("clean", &["dirty"]),
    ("loud", &["quiet", "soft"]),
    ("love", &["hate"]),
    ("true", &["false"]),
    ("first", &["last"]),
    ("push", &["pull"]),
    ("start", &["end", "finish", "stop"]),
    ("buy", &["sell"]),
    ("north", &["south"]),
    ("east", &["west"]),
    ("inside", &["outside"]),
    ("above", &["below", "beneath", "under"]),
    ("alive", &["dead"]),
    ("heavy", &["light"]),
    ("cheap", &["expensive", "dear"]),
];

const PLURALS: &[(&str, &[&str])] = &[
    ("mouse", &["mice"]),
    ("child", &["children"]),
    ("foot", &["feet"]),
    ("tooth", &["teeth"]),
    ("man", &["men"]),
    ("woman", &["women"]),
    ("goose", &["geese"]),
    ("person", &["people", "persons"]),
    ("box", &["boxes"]),
    ("baby", &["babies"]),
    ("knife", &["knives"]),
    ("leaf", &["leaves"]),
    ("cat", &["cats"]),
    ("bus", &["buses", "busses"]),
    ("city", &["cities"]),
];

/// Counting facts: (key, phrasings, answer).
const COUNTS: &[(&str, &[&str], i64)] = &[
    (
        "legs:spider",
        &[
            "How many legs does a spider have?",
            "A spider has how many legs?",
        ],
        8,
    ),
    (
        "legs:dog",
        &["How many legs does a dog have?", "A dog has how many legs?"],
        4,
    ),
    (
        "legs:bird",
        &[
            "How many legs does a bird have?",
            "A bird has how many legs?",
        ],
        2,
    ),
    (
        "legs:insect",
        &[
            "How many legs does an insect have?",
            "An insect has how many legs?",
        ],
        6,
    ),
    (
        "legs:human",
        &[
            "How many legs does a human have?",
            "How many legs does a person have?",
        ],
        2,
    ),
    (
        "arms:octopus",
        &[
            "How many arms does an octopus have?",
            "An octopus has how many arms?",
        ],
        8,
    ),
    (
        "sides:triangle",
        &[
            "How many sides does a triangle have?",
            "A triangle has how many sides?",
        ],
        3,
    ),
    (
        "sides:square",
        &[
            "How many sides does a square have?",
            "A square has how many sides?",
        ],
        4,
    ),
    (
        "sides:pentagon",
        &[
            "How many sides does a pentagon have?",
            "A pentagon has how many sides?",
        ],
        5,
    ),
    (
        "sides:hexagon",
        &[
            "How many sides does a hexagon have?",
            "A hexagon has how many sides?",
        ],
        6,
    ),
    (
        "sides:octagon",
        &[
            "How many sides does an octagon have?",
            "An octagon has how many sides?",
        ],
        8,
    ),
    (
        "days:week",
        &[
            "How many days are there in a week?",
            "A week has how many days?",
        ],
        7,
    ),
    (
        "months:year",
        &[
            "How many months are there in a year?",
            "A year has how many months?",
        ],
        12,
    ),
    (
        "hours:day",
        &[
            "How many hours are there in a day?",
            "A day has how many hours?",
        ],
        24,
    ),
    (
        "minutes:hour",
        &[
            "How many minutes are there in an hour?",
            "An hour has how many minutes?",
        ],
        60,
    ),
    (
        "seconds:minute",
        &[
            "How many seconds are there in a minute?",
            "A minute has how many seconds?",
        ],
        60,
    ),
    (
        "wheels:bicycle",
        &[
            "How many wheels does a bicycle have?",
            "A bicycle has how many wheels?",
        ],
        2,
    ),
    (
        "wheels:tricycle",
        &[
            "How many wheels does a tricycle have?",
            "A tricycle has how many wheels?",
        ],
        3,
    ),
    (
        "wheels:car",
        &[
            "How many wheels does a car have?",
            "A car has how many wheels?",
        ],
        4,
    ),
    (
        "continents",
        &[
            "How many continents are there on Earth?",
            "How many continents are there?",
        ],
        7,
    ),
    (
        "fingers:hand",
        &[
            "How many fingers are there on one hand, counting the thumb?",
            "Counting the thumb, how many fingers does one hand have?",
        ],
        5,
    ),
    (
        "eggs:dozen",
        &[
            "How many eggs are in a dozen?",
            "How many things make a dozen?",
        ],
        12,
    ),
];

/// Facts with their own phrasings: (key, phrasings, answers).
const FACTS: &[(&str, &[&str], &[&str])] = &[
    (
        "planet:home",
        &[
            "Which planet do we live on?",
            "What is the name of the planet we live on?",
        ],
        &["Earth"],
    ),
    (
        "planet:largest",
        &[
            "What is the largest planet in the solar system?",
            "Which planet is the biggest in our solar system?",
        ],
        &["Jupiter"],
    ),
    (
        "planet:red",
        &[
            "Which planet is known as the Red Planet?",
            "What planet is called the Red Planet?",
        ],
        &["Mars"],
    ),
    (
        "star:centre",
        &[
            "What star is at the centre of our solar system?",
            "Which star does the Earth orbit?",
        ],
        &["Sun", "the Sun"],
    ),
    (
        "ice",
        &[
            "What is frozen water called?",
            "What does water turn into when it freezes?",
        ],
        &["ice"],
    ),
    (
        "oxygen",
        &[
            "What gas do humans need to breathe to stay alive?",
            "Which gas in the air do we need to breathe?",
        ],
        &["oxygen"],
    ),
    (
        "h2o",
        &[
            "What is the chemical formula of water?",
            "Water has which chemical formula?",
        ],
        &["H2O", "H₂O"],
    ),
    (
        "boil",
        &[
            "At how many degrees Celsius does water boil at sea level?",
            "What is the boiling point of water in degrees Celsius?",
        ],
        &["100"],
    ),
    (
        "freeze",
        &[
            "At how many degrees Celsius does water freeze?",
            "What is the freezing point of water in degrees Celsius?",
        ],
        &["0", "zero"],
    ),
    (
        "moon",
        &[
            "What is the name of the Earth's natural satellite?",
            "What orbits the Earth and shines at night?",
        ],
        &["Moon", "the Moon"],
    ),
    (
        "honey",
        &["What do bees make?", "What sweet food is made by bees?"],
        &["honey"],
    ),
    (
        "milk:cow",
        &[
            "What drink do we get from cows?",
            "What do cows produce that people drink?",
        ],
        &["milk"],
    ),
    (
        "shakespeare",
        &[
            "Who wrote Romeo and Juliet?",
            "Which playwright wrote the play Romeo and Juliet?",
        ],
        &["Shakespeare", "William Shakespeare"],
    ),
    (
        "lungs",
        &[
            "Which organ do humans use to breathe?",
            "What organs let us breathe air?",
        ],
        &["lungs", "lung"],
    ),
    (
        "heart",
        &[
            "Which organ pumps blood around the body?",
            "What organ pumps blood through the body?",
        ],
        &["heart"],
    ),
    (
        "photosynthesis:sun",
        &[
            "What do plants need from the sky to make their food by photosynthesis?",
            "Plants make their food using energy from what?",
        ],
        &["sunlight", "sun", "the Sun"],
    ),
    (
        "ocean:largest",
        &[
            "What is the largest ocean on Earth?",
            "Which ocean is the biggest?",
        ],
        &["Pacific", "Pacific Ocean"],
    ),
    (
        "first:alphabet",
        &[
            "What is the first letter of the English alphabet?",
            "Which letter comes first in the alphabet?",
        ],
        &["A"],
    ),
    (
        "last:alphabet",
        &[
            "What is the last letter of the English alphabet?",
            "Which letter comes last in the alphabet?",
        ],
        &["Z"],
    ),
];

/// Every item of every family, in a fixed order.
fn items() -> Vec<Item> {
    let mut out = vec![];
    let num = |n: i64| number(n);
    for a in 1..=9i64 {
        for b in 1..=9i64 {
            out.push(Item {
                id: format!("arith:{a}+{b}"),
                phrasings: vec![
                    format!("What is {a} + {b}?"),
                    format!("What is {a} plus {b}?"),
                    format!("How much is {a} plus {b}?"),
                    format!("What do you get when you add {a} and {b}?"),
                    format!("Calculate {a} + {b}."),
                ],
                answers: num(a + b),
            });
        }
    }
    for a in 2..=5i64 {
        for b in 2..=5i64 {
            out.push(Item {
                id: format!("arith:{a}*{b}"),
                phrasings: vec![
                    format!("What is {a} times {b}?"),
                    format!("What is {a} multiplied by {b}?"),
                    format!("How much is {a} times {b}?"),
                ],
                answers: num(a * b),
            });
        }
    }
    table(
        "capital",
        &[
            "What is the capital of {}?",
            "Which city is the capital of {}?",
            "Name the capital city of {}.",
            "What is the capital city of {}?",
        ],
        CAPITALS,
        &mut out,
    );
    table(
        "language",
        &[
            "What language is mainly spoken in {}?",
            "What is the main language of {}?",
            "Which language do most people in {} speak?",
        ],
        LANGUAGES,
        &mut out,
    );
    table(
        "continent",
        &[
            "On which continent is {}?",
            "Which continent is {} in?",
            "{} is on which continent?",
        ],
        CONTINENTS,
        &mut out,
    );
    table(
        "opposite",
        &[
            "What is the opposite of \"{}\"?",
            "What is the opposite of the word {}?",
            "Give the opposite of \"{}\".",
            "What word means the opposite of {}?",
        ],
        OPPOSITES,
        &mut out,
    );
    table(
        "plural",
        &[
            "What is the plural of \"{}\"?",
            "What is the plural form of the word {}?",
            "How do you say more than one {}?",
        ],
        PLURALS,
        &mut out,
    );
    for n in 1..=40i64 {
        out.push(Item {
            id: format!("next:{n}"),
            phrasings: vec![
                format!("What number comes after {n}?"),
                format!("What is the next number after {n}?"),
                format!("Which number follows {n} when counting?"),
            ],
            answers: num(n + 1),
        });
    }
    for (key, ph, n) in COUNTS {
        out.push(Item {
            id: format!("count:{key}"),
            phrasings: strings(ph),
            answers: num(*n),
        });
    }
    for (key, ph, ans) in FACTS {
        out.push(Item {
            id: format!("fact:{key}"),
            phrasings: strings(ph),
            answers: strings(ans),
        });
    }
    out
}

/// FNV-1a of the id, mixed with the seed: which phrasing an item gets.
fn pick(id: &str, seed: u64, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n as u64) as usize
}

/// Every item as a question, each in the phrasing `seed` picks, in a fixed order.
pub fn pool(seed: u64) -> Vec<Question> {
    items()
        .into_iter()
        .map(|it| {
            let q = it.phrasings[pick(&it.id, seed, it.phrasings.len())].clone();
            Question {
                id: it.id,
                question: q,
                choices: vec![],
                gold: Gold::Texts(it.answers),
            }
        })
        .collect()
}

/// [`pool`] with seed 0, built once: what the judge and the data builder look families up in.
pub fn default_pool() -> &'static [Question] {
    static POOL: OnceLock<Vec<Question>> = OnceLock::new();
    POOL.get_or_init(|| pool(0))
}

/// The family of an id ("capital" of "capital:France"; arithmetic splits by operation).
pub fn family(id: &str) -> &str {
    let f = id.split(':').next().unwrap_or(id);
    if f == "arith" {
        if id.contains('*') {
            return "times";
        }
        if id[6..].contains('-') {
            return "minus";
        }
        return "plus";
    }
    f
}

/// A wrong answer for `q` in its family's terms: another item's first answer from the same
/// family in `pool` (chosen by `salt`), never one of `q`'s accepted answers. None when the
/// family has no other answer.
pub fn wrong_answer(q: &Question, pool: &[Question], salt: u64) -> Option<String> {
    let Gold::Texts(right) = &q.gold else {
        return None;
    };
    let fam = family(&q.id);
    let same: Vec<&str> = right.iter().map(|s| s.as_str()).collect();
    let mut cands: Vec<String> = pool
        .iter()
        .filter(|o| o.id != q.id && family(&o.id) == fam)
        .filter_map(|o| match &o.gold {
            Gold::Texts(t) => t.first().cloned(),
            _ => None,
        })
        .filter(|a| {
            !same
                .iter()
                .any(|r| super::judge::normalize(r) == super::judge::normalize(a))
        })
        .collect();
    cands.sort();
    cands.dedup();
    if cands.is_empty() {
        return None;
    }
    Some(cands[pick(&q.id, salt, cands.len())].clone())
}
