//! Z85 both ways on arbitrary input: decoding never panics and what decodes re-encodes to the
//! same text; any multiple of 4 bytes encodes and decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::z85;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bytes) = z85::decode(text)
    {
        assert_eq!(z85::encode(&bytes).unwrap(), text);
    }
    let whole = &data[..data.len() / 4 * 4];
    let text = z85::encode(whole).unwrap();
    assert_eq!(z85::decode(&text).unwrap(), whole);
    if let Ok(key) = z85::decode_key(&String::from_utf8_lossy(data)) {
        assert_eq!(z85::decode_key(&z85::encode_key(&key)).unwrap(), key);
    }
});
