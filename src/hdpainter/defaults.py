"""Reference defaults shared by every front-end (cheap to import)."""

# The reference CLI's prompts (docs/method.md §1); pass "" to switch either off (the paper's Table 1 used none).
REFERENCE_POSITIVE_PROMPT = "Full HD, 4K, high quality, high resolution"
REFERENCE_NEGATIVE_PROMPT = (
    "text, bad anatomy, bad proportions, blurry, cropped, deformed, disfigured, duplicate, error, extra limbs, "
    "gross proportions, jpeg artifacts, long neck, low quality, lowres, malformed, morbid, mutated, mutilated, "
    "out of frame, ugly, worst quality"
)
SEED_STRIDE = 1000  # sample k of a request uses seed + k·1000, as the reference CLI
# Stage 1's methods: the paper's four (Table 2), and the ablation RASG replaces (Eq. 6 post-hoc guidance).
PAPER_METHODS = ("baseline", "painta", "rasg", "painta+rasg")
METHODS = PAPER_METHODS + ("vanilla-guidance",)
RASG_SIGMAS = ("reference", "paper")  # σ of RASG's step: per-step α (the authors' code) or cumulative ᾱ (the paper)
VANILLA_SCALE = 1000.0  # s of "vanilla-guidance", on the gradient of RASG's objective (mean over the grid's cells)
WORKING_SIZE = 512  # long side of stage 1's working resolution (the reference's)
POISSON_PAD = 32  # reflect padding around the image before the Poisson blend (the reference's)
POISSON_DILATION = 48  # side of the square kernel the mask is dilated with (the reference's, at 2048 px)
CROP_ALIGN = 32  # stage 2's crop boxes start and end on multiples of this many high-res pixels (8 latent pixels)
EVAL_SIZE = 512  # the long side the paper evaluates at (the stage-1 output, no super-resolution)
EVAL_OPTIONS = {"rasg_eta": 0.25, "negative_prompt": "", "positive_prompt": ""}  # the reference's evaluation protocol
SAM_MODEL = "facebook/sam-vit-base"  # sr.sam_refine's SAM: the transformers port of SAM ViT-B
