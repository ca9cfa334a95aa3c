"""The paper's 12 benchmarks, declared as data (SPEC section 3)."""

from __future__ import annotations

from .spec import Source, Task

SENTIMENT_WORDS = (" negative", " positive")

BUILTIN: tuple[Task, ...] = (
    Task(
        name="sst2", kind="single",
        source=Source("stanfordnlp/sst2", pool_split="train", eval_split="validation"),
        prompt="Text:{sentence}\nLabel:", label_field="label", labels=("0", "1"),
        word_labels=SENTIMENT_WORDS, ood=("finsen", "poems"),
        description="movie-review sentiment, 0 negative / 1 positive",
    ),
    Task(
        name="finsen", kind="single",
        source=Source("takala/financial_phrasebank", "sentences_50agree", pool_split="train",
                      eval_split="train", scheme="one_split_tail"),
        prompt="Text:{sentence}\nLabel:", label_field="label", labels=("0", "1"),
        word_labels=SENTIMENT_WORDS, label_map={0: 0, 2: 1}, ood=("sst2", "poems"),
        description="financial news sentiment, neutral dropped; last 500 shuffled rows are the eval set",
    ),
    Task(
        name="poems", kind="single",
        source=Source("google-research-datasets/poem_sentiment", eval_split="train", scheme="eval_only"),
        prompt="Text:{verse_text}\nLabel:", label_field="label", labels=("0", "1"),
        word_labels=SENTIMENT_WORDS, label_map={0: 0, 1: 1},
        description="poem verse sentiment (OOD evaluation only; train split filtered to labels 0/1)",
    ),
    Task(
        name="strategytf", kind="single",
        source=Source("wics/strategy-qa", pool_split="test", eval_split="test", scheme="one_split_tail"),
        prompt="Question:{question}\nAnswer:", label_field="answer", labels=("0", "1"),
        word_labels=(" false", " true"), label_map={False: 0, True: 1},
        description="yes/no strategy questions, 0 false / 1 true",
    ),
    Task(
        name="agnews", kind="single",
        source=Source("fancyzhx/ag_news", pool_split="train", eval_split="test"),
        prompt="Text:{text}\nLabel:", label_field="label", labels=("0", "1", "2", "3"),
        word_labels=(" World", " Sports", " Business", " Tech"), ood=("bbcnews",),
        description="news topic: World, Sports, Business, Sci/Tech",
    ),
    Task(
        name="bbcnews", kind="single",
        source=Source("SetFit/bbc-news", eval_split="test", scheme="eval_only", alt_splits={"test": "all"}),
        prompt="Text:{text}\nLabel:", label_field="label", labels=("0", "1", "2", "3"),
        word_labels=(" World", " Sports", " Business", " Tech"),
        # SetFit ids tech=0 business=1 sport=2 entertainment=3 politics=4 folded onto AG News ids.
        label_map={3: 0, 4: 0, 2: 1, 1: 2, 0: 3},
        transform="cut_text", transform_args={"field": "text", "chars": 256},
        description="BBC news folded onto AG News topics, text cut to 256 characters (OOD evaluation only)",
    ),
    Task(
        name="sciq_remap", kind="single",
        source=Source("allenai/sciq", pool_split="train", eval_split="validation", alt_splits={"validation": "test"}),
        prompt="Question:{question}\nChoices:\n{choices}\n\nAnswer:", label_field="label",
        labels=("apple", "Friday", "banana", "Saturday"), transform="sciq_choices",
        ood=("qasc_remap",),
        description="science multiple choice with arbitrary option keys (4 options, seeded order)",
    ),
    Task(
        name="qasc_remap", kind="single",
        source=Source("allenai/qasc", eval_split="validation", scheme="eval_only"),
        prompt="Question:{question}\nChoices:\n{choices}\n\nAnswer:", label_field="label",
        labels=("apple", "Friday", "banana", "Saturday", "Thursday", "Sunday", "Wednesday", "Monday"),
        transform="qasc_choices",
        description="QASC 8-option multiple choice with the same arbitrary keys (OOD evaluation only)",
    ),
    Task(
        name="gsm8k", kind="generative",
        source=Source("openai/gsm8k", "main", pool_split="train", eval_split="test"),
        prompt="Question:{question}\nAnswer:", answer="{answer}", parser="number", ood=("gsm8ks",),
        description="grade-school math word problems, answer after ####",
    ),
    Task(
        name="gsm8ks", kind="generative",
        source=Source("apple/GSM-Symbolic", "main", eval_split="test", scheme="eval_only",
                      alt_configs={"main": "p2"}),
        prompt="Question:{question}\nAnswer:", answer="{answer}", parser="number",
        description="GSM-Symbolic templates of GSM8K (OOD evaluation only)",
    ),
    Task(
        name="hmath_algebra", kind="generative",
        source=Source("EleutherAI/hendrycks_math", "algebra", pool_split="train", eval_split="test"),
        prompt="Question:{problem}\nAnswer:", answer="{solution}", parser="boxed", max_new_tokens=400,
        description="MATH algebra, answer in \\boxed{}",
    ),
    Task(
        name="sciq_gen", kind="generative",
        source=Source("allenai/sciq", pool_split="train", eval_split="validation", alt_splits={"validation": "test"}),
        prompt="Question:{question}\nAnswer:", answer="{support}\n#### {correct_answer}",
        parser="after_hashes",
        description="SciQ answered in free text: support paragraph, then #### answer",
    ),
)
