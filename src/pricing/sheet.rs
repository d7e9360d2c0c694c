//! A model's price sheet: exact per-token rates, their tier variants
//! (`_flex`, `_priority`) and long-context variants (`_above_{N}k_tokens`),
//! and the ways in and out of one: the strict admin-body parser
//! ([`PriceSheet::parse_strict`]), the canonical flat storage form
//! ([`PriceSheet::from_fields`] / [`PriceSheet::to_fields`]) and the exact
//! decimal reader they share ([`parse_decimal`]).
//!
//! It owns the field names (LiteLLM's, see CONTRACT §4), the decimal rules
//! (non-negative, at most 16 decimal places and 8 integer digits, because the
//! price column is NUMERIC(24,16)) and the rule for when a variant is priced.
//! It must never let a number pass through a float (every price is read from
//! its JSON text), never decide which rate a request is billed at (that is
//! `cost`), and never do I/O.
//!
//! # When a variant is priced
//! The base rates and every tier or long-context variant are priced only when
//! they have their own input AND output rate. Inside one variant the cached
//! rate falls back to that variant's input rate and the reasoning rate to that
//! variant's output rate; nothing ever falls back to another variant's rate,
//! because billing a flex request at a base price (or the reverse) is exactly
//! the silent mis-billing CONTRACT §4 forbids. A variant with some fields but
//! not both of input and output is an error for the strict parsers (naming the
//! missing field); the lenient LiteLLM importer drops it and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rust_decimal::Decimal;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// Decimal places the price column holds (NUMERIC(24,16)).
pub const MAX_SCALE: u32 = 16;
/// Digits before the decimal point the price column holds (24 - 16).
pub const MAX_INTEGER_DIGITS: i64 = 8;
/// Currency of a sheet that names none.
pub const DEFAULT_CURRENCY: &str = "usd";

/// A price field that cannot be accepted, named as the client wrote it so the
/// admin API can answer 422 pointing at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// One of the four billed dimensions of CONTRACT §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RateField {
    Input,
    CacheRead,
    Output,
    Reasoning,
}

impl RateField {
    pub const ALL: [RateField; 4] = [
        RateField::Input,
        RateField::CacheRead,
        RateField::Output,
        RateField::Reasoning,
    ];

    /// The LiteLLM field name of the base (unsuffixed) rate.
    pub const fn key(self) -> &'static str {
        match self {
            RateField::Input => "input_cost_per_token",
            RateField::CacheRead => "cache_read_input_token_cost",
            RateField::Output => "output_cost_per_token",
            RateField::Reasoning => "output_cost_per_reasoning_token",
        }
    }

    const fn index(self) -> usize {
        match self {
            RateField::Input => 0,
            RateField::CacheRead => 1,
            RateField::Output => 2,
            RateField::Reasoning => 3,
        }
    }
}

/// Which set of rates a field belongs to.
///
/// The derived order (base, flex, priority, then long-context thresholds
/// ascending) is the order sheets keep their long-context list in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    Base,
    Flex,
    Priority,
    /// `_above_{N}k_tokens`: applies when `input_tokens > N * 1000`.
    AboveK(u32),
}

impl Variant {
    /// The suffix appended to a [`RateField::key`] (empty for the base).
    pub fn suffix(self) -> String {
        match self {
            Variant::Base => String::new(),
            Variant::Flex => "_flex".to_owned(),
            Variant::Priority => "_priority".to_owned(),
            Variant::AboveK(n) => format!("_above_{n}k_tokens"),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variant::Base => f.write_str("base"),
            Variant::Flex => f.write_str("flex"),
            Variant::Priority => f.write_str("priority"),
            Variant::AboveK(n) => write!(f, "above_{n}k_tokens"),
        }
    }
}

/// The field name of `field` in `variant`, e.g. `input_cost_per_token_flex`.
pub fn field_name(field: RateField, variant: Variant) -> String {
    format!("{}{}", field.key(), variant.suffix())
}

/// Recognises a price field name; `None` for anything else (including
/// LiteLLM's compound keys such as `..._above_200k_tokens_priority`, which
/// CONTRACT §4 has no rule for).
pub fn parse_field_name(name: &str) -> Option<(RateField, Variant)> {
    RateField::ALL.iter().find_map(|&field| {
        let rest = name.strip_prefix(field.key())?;
        parse_suffix(rest).map(|variant| (field, variant))
    })
}

fn parse_suffix(rest: &str) -> Option<Variant> {
    match rest {
        "" => Some(Variant::Base),
        "_flex" => Some(Variant::Flex),
        "_priority" => Some(Variant::Priority),
        _ => {
            let digits = rest.strip_prefix("_above_")?.strip_suffix("k_tokens")?;
            // One spelling per threshold (no leading zeros, no zero) so that
            // to_fields(from_fields(x)) gives back the same names; nine digits
            // keep N * 1000 far inside i64.
            let canonical = !digits.is_empty()
                && digits.len() <= 9
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            if !canonical {
                return None;
            }
            digits.parse().ok().map(Variant::AboveK)
        }
    }
}

/// The four rates of one variant. Input and output are always present; the
/// other two fall back to them (within this variant only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates {
    input: Decimal,
    cache_read: Option<Decimal>,
    output: Decimal,
    reasoning: Option<Decimal>,
}

impl Rates {
    pub fn input(&self) -> Decimal {
        self.input
    }
    pub fn output(&self) -> Decimal {
        self.output
    }
    /// The rate as given, `None` when it falls back to [`Rates::input`].
    pub fn cache_read(&self) -> Option<Decimal> {
        self.cache_read
    }
    /// The rate as given, `None` when it falls back to [`Rates::output`].
    pub fn reasoning(&self) -> Option<Decimal> {
        self.reasoning
    }
    /// What a cached input token costs.
    pub fn cache_read_or_input(&self) -> Decimal {
        self.cache_read.unwrap_or(self.input)
    }
    /// What a reasoning token costs.
    pub fn reasoning_or_output(&self) -> Decimal {
        self.reasoning.unwrap_or(self.output)
    }
    /// The rate of `field` as given (no fallback).
    pub fn get(&self, field: RateField) -> Option<Decimal> {
        match field {
            RateField::Input => Some(self.input),
            RateField::CacheRead => self.cache_read,
            RateField::Output => Some(self.output),
            RateField::Reasoning => self.reasoning,
        }
    }
}

/// A long-context variant: the whole request uses `rates` when
/// `input_tokens > above_k * 1000` on the default tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongContext {
    above_k: u32,
    rates: Rates,
}

impl LongContext {
    pub fn above_k(&self) -> u32 {
        self.above_k
    }
    /// The input-token count that must be exceeded.
    pub fn threshold_tokens(&self) -> i64 {
        i64::from(self.above_k) * 1000
    }
    pub fn rates(&self) -> &Rates {
        &self.rates
    }
}

/// A model's prices, validated: every rate is non-negative and fits
/// NUMERIC(24,16), and every variant present is priced (see the module doc).
/// Fields are private so that no sheet can exist without those checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceSheet {
    currency: String,
    base: Rates,
    flex: Option<Rates>,
    priority: Option<Rates>,
    /// Ascending by threshold, thresholds distinct.
    long_context: Vec<LongContext>,
    limits: ModelLimits,
}

/// What the model can take and give in one call, kept with its prices
/// (LiteLLM's `max_input_tokens` and `max_output_tokens`, and Tollgate's
/// `max_tokens_per_image`): spend control bounds a request's cost with
/// them. Not prices: they change no cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelLimits {
    /// The context window: no single model call reads more input.
    pub max_input_tokens: Option<i64>,
    pub max_output_tokens: Option<i64>,
    /// The most input tokens one image can cost.
    pub max_tokens_per_image: Option<i64>,
}

/// The limit field names, as stored beside the rates.
pub const LIMIT_FIELDS: [&str; 3] = [
    "max_input_tokens",
    "max_output_tokens",
    "max_tokens_per_image",
];
/// Largest model limit accepted (the ledger's token columns bound).
const MAX_LIMIT: i64 = 1_000_000_000;

impl ModelLimits {
    fn slot(&mut self, name: &str) -> Option<&mut Option<i64>> {
        match name {
            "max_input_tokens" => Some(&mut self.max_input_tokens),
            "max_output_tokens" => Some(&mut self.max_output_tokens),
            "max_tokens_per_image" => Some(&mut self.max_tokens_per_image),
            _ => None,
        }
    }

    fn fields(&self) -> [(&'static str, Option<i64>); 3] {
        [
            ("max_input_tokens", self.max_input_tokens),
            ("max_output_tokens", self.max_output_tokens),
            ("max_tokens_per_image", self.max_tokens_per_image),
        ]
    }

    /// Sets `name` (a limit field) from an exact value: a whole number in
    /// 1..=10^9. `Ok(false)` when `name` is not a limit field.
    pub(super) fn set(&mut self, name: &str, value: Decimal) -> Result<bool, FieldError> {
        let Some(slot) = self.slot(name) else {
            return Ok(false);
        };
        if slot.is_some() {
            return Err(FieldError::new(name, "duplicate field"));
        }
        let whole = value.normalize();
        let n = (whole.scale() == 0)
            .then(|| i64::try_from(whole.mantissa()).ok())
            .flatten()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                FieldError::new(name, "must be a whole number of tokens, 1 to 1000000000")
            })?;
        *slot = Some(n);
        Ok(true)
    }
}

impl PriceSheet {
    pub fn currency(&self) -> &str {
        &self.currency
    }
    pub fn base(&self) -> &Rates {
        &self.base
    }
    pub fn flex(&self) -> Option<&Rates> {
        self.flex.as_ref()
    }
    pub fn priority(&self) -> Option<&Rates> {
        self.priority.as_ref()
    }
    /// Long-context variants, ascending by threshold.
    pub fn long_context(&self) -> &[LongContext] {
        &self.long_context
    }
    pub fn limits(&self) -> ModelLimits {
        self.limits
    }
    /// The same prices with other model limits.
    pub fn with_limits(mut self, limits: ModelLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The long-context variant with the largest threshold that
    /// `input_tokens` exceeds (strictly), if any.
    pub fn long_context_for(&self, input_tokens: i64) -> Option<&LongContext> {
        self.long_context
            .iter()
            .rev()
            .find(|lc| input_tokens > lc.threshold_tokens())
    }

    /// The rates of one variant, if the sheet prices it.
    pub fn rates(&self, variant: Variant) -> Option<&Rates> {
        match variant {
            Variant::Base => Some(&self.base),
            Variant::Flex => self.flex.as_ref(),
            Variant::Priority => self.priority.as_ref(),
            Variant::AboveK(n) => self
                .long_context
                .iter()
                .find(|lc| lc.above_k == n)
                .map(|lc| &lc.rates),
        }
    }

    /// Builds a sheet from its canonical flat form (field name → rate), as
    /// stored in the database. Every name must be a price field and every
    /// value must obey the same rules as [`parse_decimal`]; values are
    /// normalised, so `0.0000012500000000` from a NUMERIC(24,16) column
    /// comes back as `0.00000125`.
    pub fn from_fields(
        fields: &BTreeMap<String, Decimal>,
        currency: Option<&str>,
    ) -> Result<PriceSheet, FieldError> {
        let mut builder = SheetBuilder::default();
        let mut limits = ModelLimits::default();
        for (name, value) in fields {
            if limits.set(name, *value)? {
                continue;
            }
            let (field, variant) = parse_field_name(name)
                .ok_or_else(|| FieldError::new(name.as_str(), UNKNOWN_FIELD))?;
            let value = check_decimal(*value, name)?;
            builder.set(name, field, variant, value)?;
        }
        let currency = match currency {
            Some(c) => check_currency(c)?,
            None => DEFAULT_CURRENCY.to_owned(),
        };
        builder
            .build(currency, OnIncomplete::Reject)
            .map(|(sheet, _)| sheet.with_limits(limits))
    }

    /// The canonical flat form: every rate the sheet was given (fallbacks are
    /// not materialised), keyed by LiteLLM field name. The currency is kept
    /// apart ([`PriceSheet::currency`]).
    pub fn to_fields(&self) -> BTreeMap<String, Decimal> {
        let mut out = BTreeMap::new();
        let mut put = |variant: Variant, rates: &Rates| {
            for field in RateField::ALL {
                if let Some(value) = rates.get(field) {
                    out.insert(field_name(field, variant), value);
                }
            }
        };
        put(Variant::Base, &self.base);
        if let Some(r) = &self.flex {
            put(Variant::Flex, r);
        }
        if let Some(r) = &self.priority {
            put(Variant::Priority, r);
        }
        for lc in &self.long_context {
            put(Variant::AboveK(lc.above_k), &lc.rates);
        }
        for (name, value) in self.limits.fields() {
            if let Some(n) = value {
                out.insert(name.to_owned(), Decimal::from(n));
            }
        }
        out
    }

    /// Strict parser for the body of `PUT /admin/prices/{model}` (after the
    /// admin layer has taken `effective_from` out): the price fields of
    /// CONTRACT §4 as JSON numbers or decimal strings, plus an optional
    /// `currency`. Unknown, duplicate, malformed or incomplete fields are a
    /// [`FieldError`] naming the field.
    pub fn parse_strict(fields: &[(String, Box<RawValue>)]) -> Result<PriceSheet, FieldError> {
        let mut builder = SheetBuilder::default();
        let mut limits = ModelLimits::default();
        let mut currency = None;
        let mut seen = BTreeSet::new();
        for (name, raw) in fields {
            if !seen.insert(name.as_str()) {
                return Err(FieldError::new(name.as_str(), "duplicate field"));
            }
            if name == "currency" {
                let text: String = serde_json::from_str(raw.get())
                    .map_err(|_| FieldError::new("currency", "must be a string such as \"usd\""))?;
                currency = Some(check_currency(&text)?);
                continue;
            }
            if LIMIT_FIELDS.contains(&name.as_str()) {
                limits.set(name, parse_decimal(raw, name)?)?;
                continue;
            }
            let (field, variant) = parse_field_name(name)
                .ok_or_else(|| FieldError::new(name.as_str(), UNKNOWN_FIELD))?;
            let value = parse_decimal(raw, name)?;
            builder.set(name, field, variant, value)?;
        }
        let currency = currency.unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
        builder
            .build(currency, OnIncomplete::Reject)
            .map(|(sheet, _)| sheet.with_limits(limits))
    }
}

/// A stored field as the admin API shows it: rates as exact decimal
/// strings, model limits as integers.
pub fn field_json(name: &str, value: Decimal) -> serde_json::Value {
    if LIMIT_FIELDS.contains(&name) {
        if let Ok(n) = i64::try_from(value.normalize().mantissa()) {
            return n.into();
        }
    }
    value.normalize().to_string().into()
}

/// Written as the flat field map (decimal strings; model limits as
/// integers) plus `currency`, which is also what the admin API shows.
impl Serialize for PriceSheet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.to_fields();
        let mut map = serializer.serialize_map(Some(fields.len() + 1))?;
        map.serialize_entry("currency", &self.currency)?;
        for (name, value) in &fields {
            if LIMIT_FIELDS.contains(&name.as_str()) {
                map.serialize_entry(name, &field_json(name, *value))?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

const UNKNOWN_FIELD: &str = "unknown field; expected input_cost_per_token, \
cache_read_input_token_cost, output_cost_per_token or output_cost_per_reasoning_token, \
optionally suffixed _flex, _priority or _above_{N}k_tokens, max_input_tokens, \
max_output_tokens, max_tokens_per_image or currency";

fn check_currency(code: &str) -> Result<String, FieldError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(code.to_owned())
    } else {
        Err(FieldError::new(
            "currency",
            "must be a lowercase 3-letter ISO 4217 code such as \"usd\"",
        ))
    }
}

/// What to do with a tier or long-context variant that lacks its own input
/// or output rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnIncomplete {
    /// Strict parsers: the sheet is refused, naming the missing field.
    Reject,
    /// LiteLLM import: the variant is dropped and a note says so.
    Drop,
}

/// Collects rates field by field, then checks the variant rule once.
#[derive(Debug, Default)]
pub(super) struct SheetBuilder {
    parts: BTreeMap<Variant, [Option<Decimal>; 4]>,
}

impl SheetBuilder {
    pub(super) fn set(
        &mut self,
        name: &str,
        field: RateField,
        variant: Variant,
        value: Decimal,
    ) -> Result<(), FieldError> {
        let slot = &mut self.parts.entry(variant).or_default()[field.index()];
        if slot.is_some() {
            return Err(FieldError::new(name, "duplicate field"));
        }
        *slot = Some(value);
        Ok(())
    }

    /// The sheet, plus one note per variant dropped under
    /// [`OnIncomplete::Drop`]. Missing base input or output is always an
    /// error: a model without them has no price at all.
    pub(super) fn build(
        mut self,
        currency: String,
        on_incomplete: OnIncomplete,
    ) -> Result<(PriceSheet, Vec<String>), FieldError> {
        let base_parts = self.parts.remove(&Variant::Base).unwrap_or_default();
        let base = complete(Variant::Base, base_parts).map_err(|missing| {
            FieldError::new(
                missing,
                "required: every price needs input_cost_per_token and output_cost_per_token",
            )
        })?;
        let mut sheet = PriceSheet {
            currency,
            base,
            flex: None,
            priority: None,
            long_context: Vec::new(),
            limits: ModelLimits::default(),
        };
        let mut notes = Vec::new();
        // BTreeMap order puts AboveK thresholds ascending, which is the order
        // PriceSheet::long_context promises.
        for (variant, parts) in self.parts {
            let rates = match complete(variant, parts) {
                Ok(rates) => rates,
                Err(missing) => {
                    let why = format!(
                        "a {variant} price needs its own input and output rate, and \
                         {missing} is missing"
                    );
                    match on_incomplete {
                        OnIncomplete::Reject => {
                            return Err(FieldError::new(missing, format!("required: {why}")))
                        }
                        OnIncomplete::Drop => {
                            notes.push(format!("dropped the {variant} variant: {why}"));
                            continue;
                        }
                    }
                }
            };
            match variant {
                // Removed above; unreachable, but a no-op is the safe answer.
                Variant::Base => {}
                Variant::Flex => sheet.flex = Some(rates),
                Variant::Priority => sheet.priority = Some(rates),
                Variant::AboveK(above_k) => sheet.long_context.push(LongContext { above_k, rates }),
            }
        }
        Ok((sheet, notes))
    }
}

/// `Ok(rates)` when input and output are present, else `Err(missing field name)`.
fn complete(variant: Variant, parts: [Option<Decimal>; 4]) -> Result<Rates, String> {
    let [input, cache_read, output, reasoning] = parts;
    let input = input.ok_or_else(|| field_name(RateField::Input, variant))?;
    let output = output.ok_or_else(|| field_name(RateField::Output, variant))?;
    Ok(Rates {
        input,
        cache_read,
        output,
        reasoning,
    })
}

/// A JSON object's members in document order, each value kept as its raw
/// text so that numbers never pass through a float. Deserializing it refuses
/// duplicate keys (as serde's derived structs do), so a body such as
/// `{"input_cost_per_token": 1, "input_cost_per_token": 2}` is a 400, not a
/// silent "last one wins".
#[derive(Debug, Default)]
pub struct RawFields(pub Vec<(String, Box<RawValue>)>);

impl RawFields {
    /// Takes a member out (e.g. `effective_from` before
    /// [`PriceSheet::parse_strict`]).
    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }
}

impl<'de> Deserialize<'de> for RawFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields, A::Error> {
                let mut out: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Box<RawValue> = map.next_value()?;
                    // Objects here are small (a price body, one LiteLLM
                    // entry), so a linear scan beats hashing.
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    out.push((key, value));
                }
                Ok(RawFields(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Reads one price exactly from its JSON text: a JSON number (exponent forms
/// included: `1.25e-06` is exactly `0.00000125`) or a JSON string holding a
/// number in the same syntax. Refuses negatives, booleans, null, objects,
/// arrays, empty or non-numeric strings (`"NaN"`, `"Infinity"`), and values
/// that do not fit NUMERIC(24,16). The result is normalised (no trailing
/// zeros).
pub fn parse_decimal(raw: &RawValue, field: &str) -> Result<Decimal, FieldError> {
    const JSON_WS: &[char] = &[' ', '\t', '\n', '\r'];
    let text = raw.get().trim_matches(JSON_WS);
    let err = |message: String| FieldError::new(field, message);
    match text.as_bytes().first() {
        Some(b'"') => {
            let inner: String = serde_json::from_str(text)
                .map_err(|_| err("must be a number or a decimal string".to_owned()))?;
            if inner.is_empty() {
                return Err(err("empty string is not a price".to_owned()));
            }
            parse_decimal_text(&inner).map_err(|e| err(e.message(&inner)))
        }
        Some(b'-' | b'0'..=b'9') => parse_decimal_text(text).map_err(|e| err(e.message(text))),
        Some(b't' | b'f') => Err(err(
            "must be a number or a decimal string, not a boolean".to_owned()
        )),
        Some(b'n') => Err(err(
            "must be a number or a decimal string, not null (leave the field out instead)"
                .to_owned(),
        )),
        _ => Err(err("must be a number or a decimal string".to_owned())),
    }
}

/// Applies the rules of [`parse_decimal`] to a value that is already a
/// `Decimal` (a database row, a caller's literal) and normalises it.
pub fn check_decimal(value: Decimal, field: &str) -> Result<Decimal, FieldError> {
    if value.is_zero() {
        return Ok(Decimal::ZERO);
    }
    if value.is_sign_negative() {
        return Err(FieldError::new(field, TextError::Negative.message("")));
    }
    let value = value.normalize();
    if value.scale() > MAX_SCALE {
        return Err(FieldError::new(field, TextError::TooManyPlaces.message("")));
    }
    if value >= Decimal::from(100_000_000_u32) {
        return Err(FieldError::new(field, TextError::TooLarge.message("")));
    }
    Ok(value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextError {
    Syntax,
    Negative,
    TooManyPlaces,
    TooLarge,
}

impl TextError {
    fn message(self, text: &str) -> String {
        match self {
            TextError::Syntax => {
                // Echo a bounded prefix: enough to spot "NaN" or a typo
                // without copying an arbitrary client string into the error.
                let shown: String = text.chars().take(32).collect();
                format!("{shown:?} is not a decimal number")
            }
            TextError::Negative => "must not be negative".to_owned(),
            TextError::TooManyPlaces => format!(
                "has more than {MAX_SCALE} decimal places; prices are stored as NUMERIC(24,16)"
            ),
            TextError::TooLarge => format!(
                "is too large; prices are stored as NUMERIC(24,16), at most \
                 {MAX_INTEGER_DIGITS} digits before the decimal point"
            ),
        }
    }
}

/// Exact decimal from text in JSON-number syntax
/// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
///
/// Done by hand rather than with `Decimal::from_scientific` so that every
/// outcome is exact or an error: significant digits and the power of ten are
/// worked out on the text, trailing zeros are dropped, and only then is the
/// size checked against NUMERIC(24,16), so `1.2500000000000000000000e-6` and
/// `0e-999` are accepted while `1e-17` is refused rather than rounded.
fn parse_decimal_text(text: &str) -> Result<Decimal, TextError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let digits_from = |pos: &mut usize| {
        let start = *pos;
        while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
            *pos += 1;
        }
        &bytes[start..*pos]
    };

    let negative = bytes.first() == Some(&b'-');
    if negative {
        pos += 1;
    }
    let int_part = digits_from(&mut pos);
    if int_part.is_empty() || (int_part.len() > 1 && int_part[0] == b'0') {
        return Err(TextError::Syntax);
    }
    let mut frac_part: &[u8] = &[];
    if bytes.get(pos) == Some(&b'.') {
        pos += 1;
        frac_part = digits_from(&mut pos);
        if frac_part.is_empty() {
            return Err(TextError::Syntax);
        }
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        let exp_negative = match bytes.get(pos) {
            Some(b'-') => {
                pos += 1;
                true
            }
            Some(b'+') => {
                pos += 1;
                false
            }
            _ => false,
        };
        let exp_digits = digits_from(&mut pos);
        if exp_digits.is_empty() {
            return Err(TextError::Syntax);
        }
        // Saturate: past 10^9 the value is zero, too small or too large
        // whatever the exact exponent, and i64 must not overflow.
        let mut e: i64 = 0;
        for d in exp_digits {
            e = (e * 10 + i64::from(d - b'0')).min(1_000_000_000);
        }
        exponent = if exp_negative { -e } else { e };
    }
    if pos != bytes.len() {
        return Err(TextError::Syntax);
    }

    // The significant digits of int_part ++ frac_part, without leading or
    // trailing zeros; the value is sig * 10^power.
    let digit = |k: usize| -> u8 {
        if k < int_part.len() {
            int_part[k]
        } else {
            frac_part[k - int_part.len()]
        }
    };
    let total = int_part.len() + frac_part.len();
    let Some(first) = (0..total).find(|&k| digit(k) != b'0') else {
        // Zero in any spelling, "-0" included, is a valid (free) price.
        return Ok(Decimal::ZERO);
    };
    if negative {
        return Err(TextError::Negative);
    }
    let last = (first..total)
        .rev()
        .find(|&k| digit(k) != b'0')
        .unwrap_or(first);
    let sig_len = (last - first + 1) as i64;
    let trailing_zeros = (total - 1 - last) as i64;
    let power = exponent - frac_part.len() as i64 + trailing_zeros;

    let (scale, int_digits) = if power < 0 {
        (-power, sig_len + power)
    } else {
        (0, sig_len + power)
    };
    if int_digits > MAX_INTEGER_DIGITS {
        return Err(TextError::TooLarge);
    }
    if scale > i64::from(MAX_SCALE) {
        return Err(TextError::TooManyPlaces);
    }
    // Now sig_len <= 24 and power <= 8, so everything fits an i128 easily.
    let mut mantissa: i128 = 0;
    for k in first..=last {
        mantissa = mantissa * 10 + i128::from(digit(k) - b'0');
    }
    for _ in 0..power.max(0) {
        mantissa *= 10;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale as u32).map_err(|_| TextError::TooLarge)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn parse(json: &str) -> Result<Decimal, FieldError> {
        parse_decimal(&raw(json), "input_cost_per_token")
    }

    fn strict(json: &str) -> Result<PriceSheet, FieldError> {
        let fields: RawFields = serde_json::from_str(json).unwrap();
        PriceSheet::parse_strict(&fields.0)
    }

    #[test]
    fn exponent_forms_are_exact() {
        let d = parse("1.25e-06").unwrap();
        assert_eq!(d, dec("0.00000125"));
        assert_eq!(d.to_string(), "0.00000125");
        assert_eq!(d.scale(), 8);
        assert_eq!(parse("1e-05").unwrap().to_string(), "0.00001");
        assert_eq!(parse("1E-5").unwrap().to_string(), "0.00001");
        assert_eq!(parse("6.25e-08").unwrap().to_string(), "0.0000000625");
        assert_eq!(parse("1.375e-07").unwrap().to_string(), "0.0000001375");
        assert_eq!(parse("1e+2").unwrap().to_string(), "100");
        assert_eq!(parse("0.00018").unwrap().to_string(), "0.00018");
        assert_eq!(parse("125e-8").unwrap().to_string(), "0.00000125");
        assert_eq!(parse("0.000125e-2").unwrap().to_string(), "0.00000125");
        // Trailing zeros in any position are not decimal places.
        assert_eq!(
            parse("1.2500000000000000000000000000000e-6")
                .unwrap()
                .to_string(),
            "0.00000125"
        );
        assert_eq!(
            parse("12.50000000000000000000").unwrap().to_string(),
            "12.5"
        );
    }

    #[test]
    fn agrees_with_rust_decimal_scientific_on_ordinary_values() {
        for text in [
            "1.25e-06", "2.5e-07", "1.5e-05", "4.5e-05", "3e-05", "8.75e-07",
        ] {
            assert_eq!(
                parse(text).unwrap(),
                Decimal::from_scientific(text).unwrap()
            );
        }
    }

    #[test]
    fn strings_hold_decimals() {
        assert_eq!(parse("\"0.00000125\"").unwrap(), dec("0.00000125"));
        assert_eq!(parse("\"1.25e-06\"").unwrap(), dec("0.00000125"));
        // JSON escapes are decoded before the number is read.
        assert_eq!(parse("\"\\u0031.5\"").unwrap(), dec("1.5"));
    }

    #[test]
    fn zero_is_a_price() {
        assert_eq!(parse("0").unwrap(), Decimal::ZERO);
        assert_eq!(parse("0.0").unwrap(), Decimal::ZERO);
        assert_eq!(parse("-0").unwrap(), Decimal::ZERO);
        assert_eq!(parse("0e-999").unwrap(), Decimal::ZERO);
        assert!(!parse("-0.0").unwrap().is_sign_negative());
    }

    #[test]
    fn refuses_what_is_not_a_price() {
        let cases = [
            ("-1.25e-06", "negative"),
            ("\"-0.5\"", "negative"),
            ("true", "boolean"),
            ("false", "boolean"),
            ("null", "null"),
            ("{}", "number or a decimal string"),
            ("[1]", "number or a decimal string"),
            ("\"\"", "empty"),
            ("\"NaN\"", "not a decimal number"),
            ("\"Infinity\"", "not a decimal number"),
            ("\"-Infinity\"", "not a decimal number"),
            ("\"inf\"", "not a decimal number"),
            ("\" 1\"", "not a decimal number"),
            ("\"1 \"", "not a decimal number"),
            ("\"1_000\"", "not a decimal number"),
            ("\".5\"", "not a decimal number"),
            ("\"5.\"", "not a decimal number"),
            ("\"+1\"", "not a decimal number"),
            ("\"01\"", "not a decimal number"),
            ("\"0x10\"", "not a decimal number"),
            ("\"1e\"", "not a decimal number"),
            ("0.00000000000000001", "NUMERIC(24,16)"),
            ("1e-17", "NUMERIC(24,16)"),
            ("1e-400", "decimal places"),
            ("0.0002833333333333333", "decimal places"),
            ("100000000", "too large"),
            ("1e8", "too large"),
            ("1e400", "too large"),
            ("79228162514264337593543950336", "too large"),
            ("1e99999999999999999999", "too large"),
        ];
        for (json, expect) in cases {
            let e = parse(json).expect_err(json);
            assert_eq!(e.field, "input_cost_per_token");
            assert!(e.message.contains(expect), "{json}: {}", e.message);
        }
    }

    #[test]
    fn limits_are_inclusive() {
        assert_eq!(
            parse("0.0000000000000001").unwrap(),
            Decimal::new(1, 16),
            "16 places is the column's scale"
        );
        assert_eq!(
            parse("99999999.9999999999999999").unwrap(),
            dec("99999999.9999999999999999")
        );
        assert_eq!(parse("9.9999999e7").unwrap(), dec("99999999"));
    }

    #[test]
    fn field_names_round_trip() {
        for (name, expect) in [
            ("input_cost_per_token", (RateField::Input, Variant::Base)),
            (
                "cache_read_input_token_cost_flex",
                (RateField::CacheRead, Variant::Flex),
            ),
            (
                "output_cost_per_token_priority",
                (RateField::Output, Variant::Priority),
            ),
            (
                "output_cost_per_reasoning_token_above_272k_tokens",
                (RateField::Reasoning, Variant::AboveK(272)),
            ),
        ] {
            assert_eq!(parse_field_name(name), Some(expect));
            assert_eq!(field_name(expect.0, expect.1), name);
        }
        for name in [
            "input_cost_per_token_batches",
            "input_cost_per_token_above_200k_tokens_priority",
            "input_cost_per_token_above_0k_tokens",
            "input_cost_per_token_above_0272k_tokens",
            "input_cost_per_token_above_k_tokens",
            "input_cost_per_token_above_1234567890k_tokens",
            "cache_creation_input_token_cost",
            "input_cost_per_token_",
            "max_tokens",
        ] {
            assert_eq!(parse_field_name(name), None, "{name}");
        }
    }

    #[test]
    fn strict_parses_every_variant() {
        let s = strict(
            r#"{"input_cost_per_token": 2.5e-06, "output_cost_per_token": "0.000015",
                "cache_read_input_token_cost": 2.5e-07,
                "input_cost_per_token_flex": 1.25e-06, "output_cost_per_token_flex": 7.5e-06,
                "cache_read_input_token_cost_flex": 1.3e-07,
                "input_cost_per_token_priority": 5e-06, "output_cost_per_token_priority": 3e-05,
                "output_cost_per_reasoning_token_priority": "0.00004",
                "input_cost_per_token_above_272k_tokens": 5e-06,
                "output_cost_per_token_above_272k_tokens": 2.25e-05,
                "input_cost_per_token_above_128k_tokens": 4e-06,
                "output_cost_per_token_above_128k_tokens": 2e-05,
                "currency": "usd"}"#,
        )
        .unwrap();
        assert_eq!(s.currency(), "usd");
        assert_eq!(s.base().input(), dec("0.0000025"));
        assert_eq!(s.base().output(), dec("0.000015"));
        assert_eq!(s.base().cache_read(), Some(dec("0.00000025")));
        assert_eq!(s.base().reasoning(), None);
        assert_eq!(s.base().reasoning_or_output(), dec("0.000015"));
        let flex = s.flex().unwrap();
        assert_eq!(flex.cache_read_or_input(), dec("0.00000013"));
        let prio = s.priority().unwrap();
        assert_eq!(prio.cache_read(), None);
        assert_eq!(prio.cache_read_or_input(), dec("0.000005"));
        assert_eq!(prio.reasoning_or_output(), dec("0.00004"));
        let thresholds: Vec<u32> = s.long_context().iter().map(|l| l.above_k()).collect();
        assert_eq!(thresholds, [128, 272]);
        assert_eq!(s.long_context_for(272_000).map(|l| l.above_k()), Some(128));
        assert_eq!(s.long_context_for(272_001).map(|l| l.above_k()), Some(272));
        assert_eq!(s.long_context_for(128_000).map(|l| l.above_k()), None);
        assert_eq!(
            s.rates(Variant::AboveK(272)).unwrap().output(),
            dec("0.0000225")
        );
        assert_eq!(s.rates(Variant::AboveK(200)), None);
    }

    #[test]
    fn strict_names_the_offending_field() {
        let cases = [
            (
                r#"{"output_cost_per_token": 1}"#,
                "input_cost_per_token",
                "required",
            ),
            (
                r#"{"input_cost_per_token": 1}"#,
                "output_cost_per_token",
                "required",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "price": 3}"#,
                "price",
                "unknown field",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "effective_from": "2026-01-01T00:00:00Z"}"#,
                "effective_from",
                "unknown field",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": -1}"#,
                "output_cost_per_token",
                "negative",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": "ten"}"#,
                "output_cost_per_token",
                "not a decimal",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "input_cost_per_token_flex": 0.5}"#,
                "output_cost_per_token_flex",
                "flex price needs its own input and output",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "cache_read_input_token_cost_priority": 0.5}"#,
                "input_cost_per_token_priority",
                "priority price needs its own input and output",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "output_cost_per_token_above_272k_tokens": 2}"#,
                "input_cost_per_token_above_272k_tokens",
                "above_272k_tokens price",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "currency": "USD"}"#,
                "currency",
                "lowercase",
            ),
            (
                r#"{"input_cost_per_token": 1, "output_cost_per_token": 1, "currency": 840}"#,
                "currency",
                "string",
            ),
        ];
        for (json, field, message) in cases {
            let e = strict(json).expect_err(json);
            assert_eq!(e.field, field, "{json}");
            assert!(e.message.contains(message), "{json}: {}", e.message);
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let dup = r#"{"input_cost_per_token": 1, "input_cost_per_token": 2}"#;
        let e = serde_json::from_str::<RawFields>(dup).unwrap_err();
        assert!(e
            .to_string()
            .contains("duplicate field `input_cost_per_token`"));
        // A slice built some other way is checked as well.
        let fields = vec![
            ("input_cost_per_token".to_owned(), raw("1")),
            ("output_cost_per_token".to_owned(), raw("1")),
            ("input_cost_per_token".to_owned(), raw("2")),
        ];
        let e = PriceSheet::parse_strict(&fields).unwrap_err();
        assert_eq!(e.field, "input_cost_per_token");
        assert!(e.message.contains("duplicate"));
    }

    #[test]
    fn raw_fields_remove_takes_effective_from_out() {
        let mut fields: RawFields = serde_json::from_str(
            r#"{"effective_from": "2026-10-01T00:00:00Z", "input_cost_per_token": 1, "output_cost_per_token": 2}"#,
        )
        .unwrap();
        assert_eq!(
            fields.remove("effective_from").unwrap().get(),
            "\"2026-10-01T00:00:00Z\""
        );
        assert!(fields.remove("effective_from").is_none());
        let s = PriceSheet::parse_strict(&fields.0).unwrap();
        assert_eq!(s.base().output(), dec("2"));
        assert_eq!(s.currency(), DEFAULT_CURRENCY);
    }

    #[test]
    fn from_fields_validates_and_normalises() {
        let mut f = BTreeMap::new();
        f.insert("input_cost_per_token".to_owned(), dec("0.0000012500000000"));
        f.insert(
            "output_cost_per_token".to_owned(),
            dec("0.0000100000000000"),
        );
        let s = PriceSheet::from_fields(&f, Some("eur")).unwrap();
        assert_eq!(s.base().input().to_string(), "0.00000125");
        assert_eq!(
            s.to_fields()["output_cost_per_token"].to_string(),
            "0.00001"
        );
        assert_eq!(s.currency(), "eur");

        f.insert("output_cost_per_token_flex".to_owned(), dec("0.000005"));
        let e = PriceSheet::from_fields(&f, None).unwrap_err();
        assert_eq!(e.field, "input_cost_per_token_flex");

        f.remove("output_cost_per_token_flex");
        f.insert("input_cost_per_token".to_owned(), dec("-0.1"));
        assert!(PriceSheet::from_fields(&f, None)
            .unwrap_err()
            .message
            .contains("negative"));
        f.insert(
            "input_cost_per_token".to_owned(),
            dec("0.00000000000000001"),
        );
        assert!(PriceSheet::from_fields(&f, None)
            .unwrap_err()
            .message
            .contains("NUMERIC(24,16)"));
        f.insert("input_cost_per_token".to_owned(), dec("1"));
        f.insert("input_cost_per_token_batches".to_owned(), dec("1"));
        assert_eq!(
            PriceSheet::from_fields(&f, None).unwrap_err().field,
            "input_cost_per_token_batches"
        );
    }

    #[test]
    fn serializes_as_flat_decimal_strings() {
        let s = strict(
            r#"{"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                "input_cost_per_token_flex": 6.25e-07, "output_cost_per_token_flex": 5e-06}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"currency":"usd","input_cost_per_token":"0.00000125","input_cost_per_token_flex":"0.000000625","output_cost_per_token":"0.00001","output_cost_per_token_flex":"0.000005"}"#
        );
    }

    /// A rate that fits NUMERIC(24,16): below 10^8, at most 16 places.
    fn arb_rate() -> impl Strategy<Value = Decimal> {
        (0u64..1_000_000_000_000, 4u32..=16).prop_map(|(m, s)| Decimal::new(m as i64, s))
    }

    type Four = (Decimal, Option<Decimal>, Decimal, Option<Decimal>);

    fn arb_four() -> impl Strategy<Value = Four> {
        (
            arb_rate(),
            proptest::option::of(arb_rate()),
            arb_rate(),
            proptest::option::of(arb_rate()),
        )
    }

    fn arb_fields() -> impl Strategy<Value = BTreeMap<String, Decimal>> {
        let variant = prop_oneof![
            Just(Variant::Base),
            Just(Variant::Flex),
            Just(Variant::Priority),
            (1u32..2000).prop_map(Variant::AboveK),
        ];
        (
            arb_four(),
            proptest::collection::vec((variant, arb_four()), 0..6),
        )
            .prop_map(|(base, extra)| {
                let mut out = BTreeMap::new();
                let mut put = |v: Variant, (i, c, o, r): Four| {
                    out.insert(field_name(RateField::Input, v), i);
                    out.insert(field_name(RateField::Output, v), o);
                    if let Some(c) = c {
                        out.insert(field_name(RateField::CacheRead, v), c);
                    }
                    if let Some(r) = r {
                        out.insert(field_name(RateField::Reasoning, v), r);
                    }
                };
                for (v, r) in extra {
                    put(v, r);
                }
                // Base last so a generated "Base" extra cannot leave the base
                // without input or output.
                put(Variant::Base, base);
                out
            })
    }

    proptest! {
        #[test]
        fn from_fields_to_fields_round_trips(fields in arb_fields()) {
            let sheet = PriceSheet::from_fields(&fields, None).unwrap();
            let back = sheet.to_fields();
            // The same names and the same values, to the last digit.
            prop_assert_eq!(back.len(), fields.len());
            for (k, v) in &fields {
                prop_assert_eq!(back[k], *v);
                prop_assert_eq!(back[k].to_string(), v.normalize().to_string());
            }
            prop_assert_eq!(PriceSheet::from_fields(&back, Some(sheet.currency())).unwrap(), sheet);
        }

        #[test]
        fn decimal_text_round_trips(d in arb_rate()) {
            let text = d.to_string();
            prop_assert_eq!(parse(&text).unwrap(), d);
            prop_assert_eq!(parse(&format!("\"{text}\"")).unwrap(), d);
            // The same value in exponent form, as LiteLLM writes it.
            let m = d.mantissa();
            let e = format!("{m}e-{}", d.scale());
            prop_assert_eq!(parse(&e).unwrap(), d);
            prop_assert_eq!(Decimal::from_str(&parse(&e).unwrap().to_string()).unwrap(), d);
        }
    }
}
