// Generates the golden files of tests/tokenizer/data with Hugging Face tokenizers (the Rust
// library through its Node binding, npm `tokenizers`) and @huggingface/jinja. Not run by the
// tests; rerun by hand:
//   npm install tokenizers@0.23.2 @huggingface/jinja@0.5.11
//   node tests/tokenizer/data/make_golden.js data/tokenizers/deepseek-v3 tests/tokenizer/data
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { Template } = require('@huggingface/jinja');

const [tokDir, outDir] = process.argv.slice(2);

// Seeded generator (mulberry32) so the cases are reproducible.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const handCases = [
  '', ' ', '  ', '\n', '\n\n\n', '\r\n', ' \n ', '\t\t', 'a', 'A', '0', '00', '000', '0000',
  ' '.repeat(40) + 'x', 'x' + ' '.repeat(41), '\n'.repeat(17) + 'end', 'a\n\n\n\n b \t\n\tc',
  'line1\r\nline2\r\n\r\n  line3  \n', '    indented\n        more\n\tтаб',
  '1234567890123456789', '3.14159265358979', '1,000,000.00', '-42', '+1e-10', '٣٤٥٦٧', '１２３４',
  'Ⅻ and ½ and ²³', '2024年12月26日', 'v1.2.3-rc.4', '0x1F600', 'a1b22c333d4444',
  'Hello, World! How are you?', "it's don't we're they've I'm you'll he'd", "IT'S DON'T",
  'mixed中文English日本語한국어текстعربيעבריתहिन्दीไทย', 'ελληνικά Ωμέγα', 'Ünïcödé çàfé',
  'e\u0301 combining a\u0308 marks \u0308alone', 'zero\u200bwidth\u200djoiner\ufeffbom',
  'nbsp\u00a0here\u3000ideographic\u2028line\u2029para\u0085nel\u180emvs\u2009thin',
  '😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ 🏳️‍🌈 ✋🏿', '🚀rocket🔥fire', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 𐍈',
  '<｜begin▁of▁sentence｜>', '<｜begin▁of▁sentence｜><｜end▁of▁sentence｜>',
  'x<｜end▁of▁sentence｜>y', '<｜User｜>hi<｜Assistant｜>hello<｜end▁of▁sentence｜>',
  '  <｜User｜>  spaced  <｜Assistant｜>  ', '<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>',
  '<｜begin▁of▁sentence', '<｜▁pad▁｜><｜▁pad▁｜>', '<|place▁holder▁no▁1|>', '<<｜User｜>>',
  '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```',
  'function foo(a, b) {\n  return a + b; // sum\n}\n', '#include <stdio.h>\nint main(){printf("%d\\n",1);}',
  'SELECT * FROM t WHERE a >= 10 AND b <> \'x\';', '$ ls -la | grep "*.cpp" && echo $?',
  '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}', '<div class="x">&amp;&lt;</div>',
  '!!!???...,,,;;;:::', '((([[[{{{}}}]]])))', '—–-‐ «» „“ ‘’ ‹›', '§¶†‡•…‰′″', '$€£¥₹₿',
  '++--**//%%^^&&||==!=<=>=->=>', '@user #hashtag ~tilde `code`', '\\back\\slash\\',
  'a.b.c', '.hidden', 'CamelCaseIdentifier snake_case_identifier kebab-case-identifier',
  'ALLCAPS lowercase MiXeD', 'ﬁ ligature ﬀ', 'Ａｂｃ fullwidth', 'ǅ titlecase',
  'ᄀᄁ 가나다 ㄱㄴㄷ', 'ｶﾀｶﾅ halfwidth', 'ぁあぃいゔ', '一丁七万丈三上下不与 龥龦', '㐀㐁 𠀀𠀁',
  '\u0000null\u0001ctrl\u007fdel', 'tab\u000bvt\u000cff',
];

function randomText(r) {
  const pools = [
    'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', '          ',
    '\n\n\n\r\t', '.,;:!?\'"()[]{}<>-_+=*/\\|@#$%^&~`', 'éèêëàâäôöûüçñßøåæœ',
    '的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年', 'あいうえおかきくけこアイウエオカキクケコ',
    'абвгдежзийклмнопрстуфхцчшщъыьэюя', 'αβγδεζηθικλμνξοπρστυφχψω', '가나다라마바사아자차카타파하',
    '😀😂🤔👍🔥🚀✨🎉❤️👨‍💻', '٠١٢٣٤٥٦٧٨٩', '\u00a0\u3000\u2028\u200b\u0301\u0308',
  ];
  const specials = ['<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜User｜>',
                    '<｜Assistant｜>', '<｜tool▁sep｜>', '<｜'];
  const words = ['the', ' of', 'token', 'Deep', 'Seek', 'mixture', 'expert', 'int ', 'return',
                 'def ', 'self.', '==', '->', '模型', '训练'];
  const n = 1 + Math.floor(r() * 60);
  let s = '';
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.04) s += specials[Math.floor(r() * specials.length)];
    else if (k < 0.3) s += words[Math.floor(r() * words.length)];
    else {
      const pool = [...pools[Math.floor(r() * pools.length)]];
      const m = 1 + Math.floor(r() * 6);
      for (let j = 0; j < m; j++) s += pool[Math.floor(r() * pool.length)];
    }
  }
  return s;
}

async function encodeCases(tok, texts) {
  const out = [];
  for (const text of texts) {
    const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    const idsSpecial = (await tok.encode(text, null, { addSpecialTokens: true })).getIds();
    out.push({ text, ids, ids_special: idsSpecial, decoded: await tok.decode(ids, false),
               decoded_skip: await tok.decode(ids, true) });
  }
  return out;
}

async function deepseek() {
  const tok = Tokenizer.fromFile(path.join(tokDir, 'tokenizer.json'));
  const r = rng(20261123);
  const texts = [...handCases];
  for (let i = 0; i < 400; i++) texts.push(randomText(r));
  const cases = await encodeCases(tok, texts);
  // Invalid UTF-8: HF takes only valid strings; the expected ids are those of the lossy
  // conversion (WHATWG decoder: maximal subparts become U+FFFD, as String::from_utf8_lossy).
  const invalid = [[0xff], [0xc0, 0x80], [0xe2, 0x82], [0xe2, 0x82, 0x41], [0xf0, 0x9f, 0x98],
                   [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x61, 0x80, 0x62, 0xbf, 0xc3],
                   [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe0, 0x80, 0xaf]];
  for (let i = 0; i < 60; i++) {
    const n = 1 + Math.floor(r() * 24), b = [];
    for (let j = 0; j < n; j++) b.push(r() < 0.5 ? 0x20 + Math.floor(r() * 95) : Math.floor(r() * 256));
    invalid.push(b);
  }
  const invalidCases = [];
  for (const bytes of invalid) {
    const text = Buffer.from(bytes).toString('utf8');
    const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    invalidCases.push({ bytes_hex: Buffer.from(bytes).toString('hex'), ids });
  }
  // Decoding arbitrary id sequences (split UTF-8, special tokens, ids past the vocab).
  const decodeCases = [];
  const bound = tok.getVocabSize(true);
  for (let i = 0; i < 200; i++) {
    const n = Math.floor(r() * 12), ids = [];
    for (let j = 0; j < n; j++) {
      const k = r();
      ids.push(k < 0.15 ? Math.floor(r() * 3) : k < 0.25 ? 128000 + Math.floor(r() * 820)
             : k < 0.5 ? Math.floor(r() * 256) : Math.floor(r() * bound));
    }
    decodeCases.push({ ids, text: await tok.decode(ids, false), text_skip: await tok.decode(ids, true) });
  }
  const long = 'The quick brown fox. '.repeat(300) + ' '.repeat(5000) + 'x' + 'a'.repeat(3000) +
               '\n'.repeat(2000) + '9'.repeat(1000) + '中'.repeat(1500);
  const longCase = (await encodeCases(tok, [long]))[0];
  fs.writeFileSync(path.join(outDir, 'deepseek_v3_hf_cases.json'), JSON.stringify(
      { generator: 'HF tokenizers 0.23.2 (npm tokenizers), make_golden.js', seed: 20261123,
        cases, invalid_utf8: invalidCases, decode: decodeCases, long: longCase }));
}

// Small tokenizers exercising the other components, built from the first merges of DeepSeek-V3.
async function variants() {
  const base = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer.json'), 'utf8'));
  const alphabet = require('tokenizers').byteLevelAlphabet();
  const vocab = {}, merges = [];
  for (const c of alphabet.sort()) vocab[c] = Object.keys(vocab).length;
  for (const m of base.model.merges) {
    if (merges.length >= 2000) break;
    const [a, b] = typeof m === 'string' ? m.split(' ') : m;
    if (!(a in vocab) || !(b in vocab)) continue;
    if (!((a + b) in vocab)) vocab[a + b] = Object.keys(vocab).length;
    merges.push(a + ' ' + b);
  }
  const n = Object.keys(vocab).length;
  const added = (content, o = {}) => Object.assign(
      { id: 0, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }, o);
  const mk = (over) => {
    const t = {
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
               end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false,
               vocab, merges },
    };
    Object.assign(t, over);
    let next = n;
    for (const a of t.added_tokens) a.id = vocab[a.content] ?? next++;
    return t;
  };
  const split = (re, behavior, invert = false) => ({ type: 'Split', pattern: { Regex: re }, behavior, invert });
  const bl = (aps, re) => ({ type: 'ByteLevel', add_prefix_space: aps, trim_offsets: true, use_regex: re });
  const seq = (...p) => ({ type: 'Sequence', pretokenizers: p });
  const V = {
    gpt2_prefix_space: mk({ pre_tokenizer: bl(true, true) }),
    bytelevel_no_regex: mk({ pre_tokenizer: bl(false, false) }),
    split_removed: mk({ pre_tokenizer: seq(split('\\s+', 'Removed'), bl(false, false)) }),
    split_merged_prev: mk({ pre_tokenizer: seq(split('[,.!?]', 'MergedWithPrevious'), bl(false, false)) }),
    split_merged_next: mk({ pre_tokenizer: seq(split(' ', 'MergedWithNext'), bl(false, false)) }),
    split_contiguous: mk({ pre_tokenizer: seq(split('\\p{L}', 'Contiguous'), bl(false, false)) }),
    split_invert: mk({ pre_tokenizer: seq(split('\\p{L}+|\\p{N}+', 'Removed', true), bl(false, false)) }),
    split_string: mk({ pre_tokenizer: seq({ type: 'Split', pattern: { String: ', ' }, behavior: 'Isolated', invert: false }, bl(false, false)) }),
    digits: mk({ pre_tokenizer: seq({ type: 'Digits', individual_digits: true }, bl(false, true)) }),
    digits_contiguous: mk({ pre_tokenizer: seq({ type: 'Digits', individual_digits: false }, bl(true, false)) }),
    llama3_regex: mk({ pre_tokenizer: seq(split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", 'Isolated'), bl(false, false)) }),
    normalizers: mk({ normalizer: { type: 'Sequence', normalizers: [
        { type: 'Strip', strip_left: true, strip_right: true },
        { type: 'Replace', pattern: { String: 'ab' }, content: 'X' },
        { type: 'Replace', pattern: { Regex: '\\d+' }, content: '#' },
        { type: 'Prepend', prepend: '>' }] } }),
    added_options: mk({ added_tokens: [
        added('<s>'), added('</s>'), added('[L]', { lstrip: true }), added('[R]', { rstrip: true }),
        added('[LR]', { lstrip: true, rstrip: true }), added('word', { single_word: true, special: false }),
        added('foo', { special: false, normalized: true }), added('foobar', { special: false }),
        added('fo', { special: false, normalized: true })],
      post_processor: { type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
        pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { '<s>': { id: '<s>', ids: [n], tokens: ['<s>'] }, '</s>': { id: '</s>', ids: [n + 1], tokens: ['</s>'] } } } }),
    ignore_merges: mk({ model: Object.assign({}, mk({}).model, { ignore_merges: true,
        vocab: Object.assign({}, vocab, { 'Ġtokenization': n }) }) }),
  };
  const texts = [
    '', ' ', 'Hello, world! Hello,world', '  lead and trail  ', 'a  b   c    d', 'abcabab 123 4567 ab12',
    "I'll say it's fine, THEY'RE here.", 'Numbers: 1234567 and ٣٤٥ and １２', 'x\n\n  y \r\n z',
    'fooword word wordy _word word_ (word) foo foobar fo food', '<s>hi</s>', 'a [L] b  [L]c',
    'a [R]  b [R]c', ' [LR]  x [LR][LR] ', 'ab[L][R]ab', ' tokenization tokenizations', '中文 text 日本語',
    '😀 emoji 👍🏽 mixed', 'tab\there', 'end.', '.start', '...', ',,, , ,', 'UPPER lower 12ab34',
  ];
  const out = {};
  for (const [name, json] of Object.entries(V)) {
    const tok = Tokenizer.fromString(JSON.stringify(json));
    out[name] = { tokenizer: json, cases: await encodeCases(tok, texts) };
  }
  fs.writeFileSync(path.join(outDir, 'variants_hf_cases.json'), JSON.stringify(
      { generator: 'HF tokenizers 0.23.2 (npm tokenizers), make_golden.js', variants: out }));
}

// Chat prompts rendered by @huggingface/jinja from DeepSeek-V3's chat_template.
function chat() {
  const cfg = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer_config.json'), 'utf8'));
  const tmpl = new Template(cfg.chat_template);
  const bos = cfg.bos_token.content;
  const call = (name, args) => ({ type: 'function', function: { name, arguments: args } });
  const convs = [
    [{ role: 'user', content: 'Hello' }],
    [{ role: 'system', content: 'You are helpful.' }, { role: 'user', content: 'Hi' }],
    [{ role: 'system', content: 'S1' }, { role: 'user', content: 'U1' }, { role: 'system', content: 'S2' },
     { role: 'assistant', content: 'A1' }, { role: 'user', content: 'U2' }],
    [{ role: 'user', content: '2+2?' }, { role: 'assistant', content: '4' }, { role: 'user', content: 'and 3+3?' }],
    [{ role: 'user', content: '' }, { role: 'assistant', content: '' }],
    [{ role: 'user', content: 'Weather in Paris and Rome?' },
     { role: 'assistant', content: null, tool_calls: [call('get_weather', '{"city": "Paris"}'), call('get_weather', '{"city": "Rome"}')] },
     { role: 'tool', content: '{"t": 20}' }, { role: 'tool', content: '{"t": 25}' },
     { role: 'assistant', content: 'Paris 20, Rome 25.' }, { role: 'user', content: 'Thanks' }],
    [{ role: 'user', content: 'q' }, { role: 'assistant', content: null, tool_calls: [call('f', '{}')] },
     { role: 'tool', content: 'r' }],
    [{ role: 'developer', content: 'ignored role' }, { role: 'user', content: 'multi\nline\n\ntext' }],
  ];
  const cases = [];
  for (const messages of convs)
    for (const add_generation_prompt of [false, true])
      cases.push({ messages, add_generation_prompt,
                   text: tmpl.render({ messages, bos_token: bos, add_generation_prompt }) });
  fs.writeFileSync(path.join(outDir, 'deepseek_v3_chat_cases.json'), JSON.stringify(
      { generator: '@huggingface/jinja 0.5.11 on the chat_template of DeepSeek-V3 tokenizer_config.json', cases }, null, 1));
}

(async () => {
  await deepseek();
  await variants();
  chat();
})();
