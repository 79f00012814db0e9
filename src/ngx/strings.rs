//! Reading a request the way nginx holds it: strings, header lists, compiled values.

use ngx::ffi::{
    NGX_OK, ngx_http_complex_value, ngx_http_complex_value_t, ngx_http_request_t, ngx_int_t, ngx_list_part_t,
    ngx_list_t, ngx_str_t, ngx_table_elt_t,
};

/// The bytes of an nginx string.
pub fn str_bytes(s: &ngx_str_t) -> &[u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: nginx strings are valid (data, len) pairs for as long as their owner lives.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// Evaluates a compiled value; the result lives in the request pool.
pub fn eval(r: &ngx_http_request_t, cv: *mut ngx_http_complex_value_t) -> Option<&[u8]> {
    let mut out = ngx_str_t { len: 0, data: std::ptr::null_mut() };
    // SAFETY: cv was compiled at config time; r is the current request.
    if unsafe { ngx_http_complex_value(std::ptr::from_ref(r).cast_mut(), cv, &mut out) }
        != NGX_OK as ngx_int_t
    {
        return None;
    }
    if out.len == 0 || out.data.is_null() {
        return Some(&[]);
    }
    // SAFETY: the value was allocated from the request pool, which outlives 'r.
    Some(unsafe { std::slice::from_raw_parts(out.data, out.len) })
}

/// Live headers of a list as byte pairs; entries nginx deleted (hash 0) are skipped.
#[derive(Clone)]
pub struct HeaderIter<'a> {
    part: *const ngx_list_part_t,
    i: usize,
    _list: std::marker::PhantomData<&'a ngx_list_t>,
}

impl<'a> HeaderIter<'a> {
    pub fn new(list: &'a ngx_list_t) -> Self {
        HeaderIter { part: &list.part, i: 0, _list: std::marker::PhantomData }
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // SAFETY: the list and its parts outlive 'a; elements are ngx_table_elt_t.
            let part = unsafe { self.part.as_ref()? };
            if self.i >= part.nelts {
                self.part = part.next;
                self.i = 0;
                continue;
            }
            // SAFETY: i < nelts, within the part's element array.
            let h = unsafe { &*part.elts.cast::<ngx_table_elt_t>().add(self.i) };
            self.i += 1;
            if h.hash != 0 {
                return Some((str_bytes(&h.key), str_bytes(&h.value)));
            }
        }
    }
}
