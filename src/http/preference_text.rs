//! Every sentence of the preference page, in English and Chinese. One table
//! per language, so a missing translation is a compile error, not a blank.

use crate::{
    domain::{ConcernCategory, ConcernStatus},
    policy::Basis,
};

use super::pages::Lang;

pub struct Strings {
    pub title: &'static str,
    pub intro: &'static str,
    pub policy_version: &'static str,
    pub language: &'static str,
    pub purposes: &'static str,
    pub basis_contract: &'static str,
    pub basis_consent: &'static str,
    pub basis_opt_out: &'static str,
    pub allowed: &'static str,
    pub not_allowed: &'static str,
    pub currently: &'static str,
    pub from_gpc: &'static str,
    pub partners: &'static str,
    pub partners_intro: &'static str,
    pub contact: &'static str,
    pub permitted: &'static str,
    pub not_permitted: &'static str,
    pub save: &'static str,
    pub no_partners: &'static str,
    pub disclosures: &'static str,
    pub disclosures_intro: &'static str,
    pub no_disclosures: &'static str,
    pub when: &'static str,
    pub to_whom: &'static str,
    pub which_fields: &'static str,
    pub on_what_basis: &'static str,
    pub concern: &'static str,
    pub concern_intro: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub contact_preference: &'static str,
    pub contact_hint: &'static str,
    pub file_concern: &'static str,
    pub your_concerns: &'static str,
    pub filed: &'static str,
    pub status: &'static str,
    pub answer_by: &'static str,
    pub data: &'static str,
    pub data_intro: &'static str,
    pub confirm_download: &'static str,
    pub download_ready: &'static str,
    pub download: &'static str,
    pub saved: &'static str,
    pub unchanged: &'static str,
    pub concern_filed: &'static str,
    pub concern_invalid: &'static str,
    pub refused_title: &'static str,
    pub refused_body: &'static str,
    pub back: &'static str,
    pub download_expired: &'static str,
    pub failure_title: &'static str,
    pub failure_body: &'static str,
}

const EN: Strings = Strings {
    title: "Your privacy choices",
    intro: "Here you can see and change how we use your personal data, who has received it, \
            download everything we hold about you, and tell us if something is wrong.",
    policy_version: "Privacy policy version",
    language: "Language",
    purposes: "How we use your data",
    basis_contract: "Needed to deliver your orders",
    basis_consent: "Only with your permission: off until you allow it",
    basis_opt_out: "Used unless you refuse: you can refuse at any time",
    allowed: "Allowed",
    not_allowed: "Not allowed",
    currently: "Now",
    from_gpc: "Set by your browser's Global Privacy Control signal",
    partners: "Partners",
    partners_intro: "We give your data to these partners only if you permit it.",
    contact: "Contact",
    permitted: "Permitted",
    not_permitted: "Not permitted",
    save: "Save my choices",
    no_partners: "We have no partners.",
    disclosures: "Who received your data",
    disclosures_intro: "Each time we gave your data to someone: when, to whom, which kinds of \
                        data and why. The values themselves are not shown here.",
    no_disclosures: "We have not given your data to anyone.",
    when: "When",
    to_whom: "To whom",
    which_fields: "Which data",
    on_what_basis: "Why",
    concern: "Raise a concern",
    concern_intro: "If you think we handled your data wrongly, tell us. We track every concern \
                    until it is resolved.",
    category: "What is it about?",
    description: "What happened?",
    contact_preference: "How should we reach you?",
    contact_hint: "For example an email address or a phone number.",
    file_concern: "Send my concern",
    your_concerns: "Your concerns",
    filed: "Filed",
    status: "Status",
    answer_by: "We answer by",
    data: "Your data",
    data_intro: "Download everything we hold about you as a JSON file. To keep a forwarded \
                 letter from giving your data away, confirm first; the download button then \
                 works for 15 minutes.",
    confirm_download: "Confirm: prepare my download",
    download_ready: "Your download is ready for 15 minutes.",
    download: "Download my data",
    saved: "Your choices are saved.",
    unchanged: "Nothing changed: these were already your choices.",
    concern_filed: "Your concern was filed. Its status is below.",
    concern_invalid: "Please fill in what happened and how we should reach you.",
    refused_title: "This form cannot be accepted",
    refused_body: "The form did not come from your privacy page, or the page is too old. \
                   Nothing was changed. Please open the page again and retry.",
    back: "Back to your privacy choices",
    download_expired: "The confirmation for the download has expired. Nothing was downloaded. \
                       Please confirm again.",
    failure_title: "Please try again",
    failure_body: "We could not complete this just now. Nothing was changed; please try again \
                   in a moment.",
};

const ZH: Strings = Strings {
    title: "您的隐私选择",
    intro: "您可以在此查看并更改我们如何使用您的个人信息，查看谁收到了您的信息，\
            下载我们持有的关于您的全部信息，并在发现问题时告诉我们。",
    policy_version: "隐私政策版本",
    language: "语言",
    purposes: "我们如何使用您的信息",
    basis_contract: "为向您交付订单所必需",
    basis_consent: "仅在您同意后使用：您同意之前不会使用",
    basis_opt_out: "除非您拒绝，否则会使用：您可以随时拒绝",
    allowed: "允许",
    not_allowed: "不允许",
    currently: "当前",
    from_gpc: "由您浏览器的全球隐私控制（GPC）信号设定",
    partners: "合作方",
    partners_intro: "只有在您许可后，我们才会向这些合作方提供您的信息。",
    contact: "联系方式",
    permitted: "已许可",
    not_permitted: "未许可",
    save: "保存我的选择",
    no_partners: "我们没有合作方。",
    disclosures: "谁收到了您的信息",
    disclosures_intro: "我们每次向他人提供您的信息的时间、对象、信息种类和理由。此处不显示信息的具体内容。",
    no_disclosures: "我们没有向任何人提供过您的信息。",
    when: "时间",
    to_whom: "对象",
    which_fields: "信息种类",
    on_what_basis: "理由",
    concern: "提出意见",
    concern_intro: "如果您认为我们处理您的信息有误，请告诉我们。我们会跟进每一项意见，直到解决。",
    category: "与什么有关？",
    description: "发生了什么？",
    contact_preference: "我们应如何联系您？",
    contact_hint: "例如电子邮箱地址或电话号码。",
    file_concern: "提交我的意见",
    your_concerns: "您的意见",
    filed: "提交时间",
    status: "状态",
    answer_by: "答复期限",
    data: "您的信息",
    data_intro: "以 JSON 文件下载我们持有的关于您的全部信息。为防止转发的信件泄露您的信息，\
                 请先确认；确认后下载按钮在 15 分钟内有效。",
    confirm_download: "确认：准备下载",
    download_ready: "您的下载已准备好，15 分钟内有效。",
    download: "下载我的信息",
    saved: "您的选择已保存。",
    unchanged: "没有更改：这些本来就是您的选择。",
    concern_filed: "您的意见已提交，处理状态见下方。",
    concern_invalid: "请填写发生了什么以及我们应如何联系您。",
    refused_title: "无法接受此表单",
    refused_body: "此表单并非来自您的隐私页面，或页面已过期。未做任何更改。请重新打开页面后再试。",
    back: "返回您的隐私选择",
    download_expired: "下载确认已过期，未下载任何内容。请重新确认。",
    failure_title: "请稍后重试",
    failure_body: "暂时无法完成操作，未做任何更改。请稍后重试。",
};

impl Lang {
    pub fn strings(self) -> &'static Strings {
        match self {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

impl Strings {
    pub fn basis(&self, basis: Basis) -> &'static str {
        match basis {
            Basis::Contract => self.basis_contract,
            Basis::Consent => self.basis_consent,
            Basis::OptOut => self.basis_opt_out,
        }
    }
}

pub fn category(lang: Lang, category: ConcernCategory) -> &'static str {
    use ConcernCategory::*;
    match (lang, category) {
        (Lang::En, Misuse) => "My data was misused",
        (Lang::En, UnwantedMail) => "I get mail I did not want",
        (Lang::En, WrongData) => "My data is wrong",
        (Lang::En, Disclosure) => "My data went to someone it should not have",
        (Lang::En, Other) => "Something else",
        (Lang::Zh, Misuse) => "我的信息被滥用",
        (Lang::Zh, UnwantedMail) => "我收到了不想要的邮件",
        (Lang::Zh, WrongData) => "我的信息有误",
        (Lang::Zh, Disclosure) => "我的信息被提供给了不应提供的对象",
        (Lang::Zh, Other) => "其他",
    }
}

pub fn status(lang: Lang, status: ConcernStatus) -> &'static str {
    use ConcernStatus::*;
    match (lang, status) {
        (Lang::En, Filed) => "Received",
        (Lang::En, Acknowledged) => "Being looked into",
        (Lang::En, Resolved) => "Resolved",
        (Lang::Zh, Filed) => "已收到",
        (Lang::Zh, Acknowledged) => "处理中",
        (Lang::Zh, Resolved) => "已解决",
    }
}

/// The 400 page speaks both languages: a broken link may have lost the
/// `lang` it was opened with, and the person must understand it either way.
pub fn invalid_link(expired: bool) -> [(Lang, &'static str, &'static str); 2] {
    if expired {
        [
            (
                Lang::En,
                "This link has expired",
                "Links to your privacy page work for a limited time. Nothing was changed. \
                 Please use the link in your most recent letter.",
            ),
            (
                Lang::Zh,
                "此链接已过期",
                "隐私页面链接的有效期有限。未做任何更改。请使用您最近收到的信件中的链接。",
            ),
        ]
    } else {
        [
            (
                Lang::En,
                "This link is not valid",
                "The link is damaged or was altered. Nothing was changed. \
                 Please use the link exactly as it appears in your letter.",
            ),
            (
                Lang::Zh,
                "此链接无效",
                "该链接已损坏或被修改。未做任何更改。请使用信件中原样的链接。",
            ),
        ]
    }
}
