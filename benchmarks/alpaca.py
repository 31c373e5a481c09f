"""12 Alpaca-style rows (instruction, input, output; 5 with an input): the no-download data of
the test suite and of the benchmarks that run without a real data set."""

ALPACA_ROWS = [
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "Eat plenty of vegetables, exercise regularly and sleep at least seven hours a night.",
    },
    {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {
        "instruction": "Translate the sentence into French.",
        "input": "The cat sleeps on the sofa.",
        "output": "Le chat dort sur le canapé.",
    },
    {
        "instruction": "Summarize the text in one sentence.",
        "input": "The meeting was moved from Monday to Wednesday because the room was booked.",
        "output": "The meeting now takes place on Wednesday since the room was unavailable on Monday.",
    },
    {
        "instruction": "Write a haiku about the sea.",
        "input": "",
        "output": "Grey waves fold and break,\nsalt wind carries gull voices,\nthe tide keeps its time.",
    },
    {
        "instruction": "Explain why the sky is blue.",
        "input": "",
        "output": "Air molecules scatter short blue wavelengths of sunlight more than long red ones.",
    },
    {"instruction": "Add the two numbers.", "input": "17 and 25", "output": "17 + 25 = 42."},
    {"instruction": "Name the largest planet in the solar system.", "input": "", "output": "Jupiter."},
    {
        "instruction": "Classify the sentiment of the review as positive or negative.",
        "input": "The battery died after two days and support never answered.",
        "output": "Negative.",
    },
    {
        "instruction": "Write a Python function that reverses a string.",
        "input": "",
        "output": "def reverse(s):\n    return s[::-1]",
    },
    {"instruction": "Suggest a name for a bakery.", "input": "", "output": "The Rolling Pin."},
    {
        "instruction": "Convert the temperature to Fahrenheit.",
        "input": "20 degrees Celsius",
        "output": "20 degrees Celsius is 68 degrees Fahrenheit.",
    },
]
